"""The condensation engine: DM, siamese augmentation, coresets, synthetic sets, evaluation."""

from fedcond.distill.augment import LAYOUTS, AugmentParams, SiameseAugment
from fedcond.distill.dm import INITS, CondensationResult, DistributionMatching, dm_loss, initial_synthetic
from fedcond.distill.kmeans import KMeansResult, kmeans
from fedcond.distill.matching import MATCHINGS, check_matching, class_mmd_loss, gaussian_mmd2
from fedcond.distill.statistics import MeanStatistics, RealBatch, RealStatistics
from fedcond.distill.synthetic import SyntheticSet, SyntheticSetError

__all__ = [
    "INITS",
    "LAYOUTS",
    "AugmentParams",
    "CondensationResult",
    "DistributionMatching",
    "KMeansResult",
    "MATCHINGS",
    "MeanStatistics",
    "RealBatch",
    "RealStatistics",
    "SiameseAugment",
    "SyntheticSet",
    "SyntheticSetError",
    "check_matching",
    "class_mmd_loss",
    "dm_loss",
    "gaussian_mmd2",
    "initial_synthetic",
    "kmeans",
]

from fedcond.distill.coreset import (  # noqa: E402
    CoresetSelector,
    HerdingSelector,
    RandomSelector,
    get_selector,
    herding_order,
    select_coreset,
)
from fedcond.distill.evaluate import (  # noqa: E402
    EvalResult,
    accuracy,
    augment_for,
    evaluate_synthetic,
    predict_logits,
    train_model,
    train_with_recipe,
)

__all__ += [
    "CoresetSelector",
    "EvalResult",
    "HerdingSelector",
    "RandomSelector",
    "accuracy",
    "augment_for",
    "evaluate_synthetic",
    "get_selector",
    "herding_order",
    "predict_logits",
    "select_coreset",
    "train_model",
    "train_with_recipe",
]
