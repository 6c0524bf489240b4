"""The condensation engine: a registry of condensers (DM, coresets, k-means), siamese augmentation,
synthetic sets, evaluation."""

from fedcond.distill.augment import LAYOUTS, AugmentParams, SiameseAugment
from fedcond.distill.condenser import (
    Condenser,
    ShortClassError,
    UnsupportedOptionError,
    check_class_sizes,
    get_condenser,
    list_condensers,
    register_condenser,
)
from fedcond.distill.coreset import (
    CoresetSelector,
    HerdingSelector,
    RandomSelector,
    get_selector,
    herding_order,
    select_coreset,
)
from fedcond.distill.dm import INITS, CondensationResult, DistributionMatching, dm_loss, initial_synthetic
from fedcond.distill.evaluate import EvalProgress, EvalResult, augment_for, evaluate_synthetic, train_with_recipe
from fedcond.distill.formation import check_factor, decode_formation, encode_formation, expand_labels
from fedcond.distill.gradient_matching import GradientMatching, gradient_distance
from fedcond.distill.kmeans import KMeansResult, kmeans
from fedcond.distill.matching import MATCHINGS, check_matching, class_mmd_loss, gaussian_mmd2
from fedcond.distill.selection import HerdingCondenser, KMeansCondenser, RandomCondenser
from fedcond.distill.statistics import MeanStatistics, RealBatch, RealStatistics
from fedcond.distill.synthetic import SyntheticSet, SyntheticSetError

__all__ = [
    "INITS",
    "LAYOUTS",
    "MATCHINGS",
    "AugmentParams",
    "CondensationResult",
    "Condenser",
    "CoresetSelector",
    "DistributionMatching",
    "EvalProgress",
    "EvalResult",
    "GradientMatching",
    "HerdingCondenser",
    "HerdingSelector",
    "KMeansCondenser",
    "KMeansResult",
    "MeanStatistics",
    "RandomCondenser",
    "RandomSelector",
    "RealBatch",
    "RealStatistics",
    "SiameseAugment",
    "SyntheticSet",
    "ShortClassError",
    "SyntheticSetError",
    "UnsupportedOptionError",
    "augment_for",
    "check_class_sizes",
    "check_factor",
    "check_matching",
    "class_mmd_loss",
    "decode_formation",
    "dm_loss",
    "encode_formation",
    "evaluate_synthetic",
    "expand_labels",
    "gaussian_mmd2",
    "get_condenser",
    "gradient_distance",
    "get_selector",
    "herding_order",
    "initial_synthetic",
    "kmeans",
    "list_condensers",
    "register_condenser",
    "select_coreset",
    "train_with_recipe",
]
