"""The condensation engine: DM, siamese augmentation, coresets, synthetic sets, evaluation."""

from fedcond.distill.augment import LAYOUTS, AugmentParams, SiameseAugment
from fedcond.distill.coreset import (
    CoresetSelector,
    HerdingSelector,
    RandomSelector,
    get_selector,
    herding_order,
    select_coreset,
)
from fedcond.distill.dm import INITS, CondensationResult, DistributionMatching, dm_loss, initial_synthetic
from fedcond.distill.evaluate import (
    EvalProgress,
    EvalResult,
    accuracy,
    augment_for,
    evaluate_synthetic,
    predict_logits,
    train_model,
    train_with_recipe,
)
from fedcond.distill.formation import check_factor, decode_formation, encode_formation, expand_labels
from fedcond.distill.kmeans import KMeansResult, kmeans
from fedcond.distill.matching import MATCHINGS, check_matching, class_mmd_loss, gaussian_mmd2
from fedcond.distill.statistics import MeanStatistics, RealBatch, RealStatistics
from fedcond.distill.synthetic import SyntheticSet, SyntheticSetError

__all__ = [
    "INITS",
    "LAYOUTS",
    "MATCHINGS",
    "AugmentParams",
    "CondensationResult",
    "CoresetSelector",
    "DistributionMatching",
    "EvalProgress",
    "EvalResult",
    "HerdingSelector",
    "KMeansResult",
    "MeanStatistics",
    "RandomSelector",
    "RealBatch",
    "RealStatistics",
    "SiameseAugment",
    "SyntheticSet",
    "SyntheticSetError",
    "accuracy",
    "augment_for",
    "check_factor",
    "check_matching",
    "class_mmd_loss",
    "decode_formation",
    "dm_loss",
    "encode_formation",
    "evaluate_synthetic",
    "expand_labels",
    "gaussian_mmd2",
    "get_selector",
    "herding_order",
    "initial_synthetic",
    "kmeans",
    "predict_logits",
    "select_coreset",
    "train_model",
    "train_with_recipe",
]
