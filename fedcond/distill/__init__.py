"""The condensation engine: DM, siamese augmentation, coresets, synthetic sets, evaluation."""

from fedcond.distill.augment import AugmentParams, SiameseAugment
from fedcond.distill.dm import CondensationResult, DistributionMatching, dm_loss
from fedcond.distill.kmeans import KMeansResult, kmeans
from fedcond.distill.matching import MATCHINGS, check_matching, class_mmd_loss, gaussian_mmd2
from fedcond.distill.statistics import MeanStatistics, RealBatch, RealStatistics
from fedcond.distill.synthetic import SyntheticSet, SyntheticSetError

__all__ = [
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
]
