"""fedcond: federated and continual learning on distilled data.

The engine (config, data, models, training, distillation) is imported eagerly. The federated
(Flower), continual (Avalanche) and privacy (Opacus) parts load on first attribute access, so
``import fedcond`` stays fast and works without starting those frameworks::

    import fedcond
    fedcond.DistributionMatching      # engine, already imported
    fedcond.FedCond                   # imports fedcond.federated (and Flower) now
"""

from __future__ import annotations

from fedcond.config import (
    AuditConfig,
    AugmentConfig,
    ConfigError,
    ContinualConfig,
    DataConfig,
    DistillConfig,
    DPConfig,
    EvalConfig,
    FederatedConfig,
    load_toml,
    parse_config,
)
from fedcond.data import ArrayDataset, DatasetNotFoundError, DatasetSpec, DatasetSplits, load_dataset
from fedcond.distill import (
    CondensationResult,
    DistributionMatching,
    EvalResult,
    MeanStatistics,
    RealStatistics,
    SiameseAugment,
    SyntheticSet,
    SyntheticSetError,
    evaluate_synthetic,
    select_coreset,
)
from fedcond.lazy import lazy_attribute
from fedcond.models import get_model
from fedcond.training import LossHook, train_model

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    # federated (Flower)
    "FedCond": "fedcond.federated",
    "FederatedJob": "fedcond.federated",
    "job_from_mapping": "fedcond.federated",
    "run_federated": "fedcond.federated",
    "simulate": "fedcond.federated",
    "validate_reply": "fedcond.federated",
    # continual (Avalanche)
    "DistilledBuffer": "fedcond.continual",
    "DistilledReplayPlugin": "fedcond.continual",
    "MemoryAugmentation": "fedcond.continual",
    "run_continual": "fedcond.continual",
    # privacy (Opacus for DP)
    "run_audit": "fedcond.privacy",
    "recoverability": "fedcond.privacy",
    "membership_inference": "fedcond.privacy",
    "PrivateCondensation": "fedcond.privacy",
    "PrivacyAccountant": "fedcond.privacy",
}

__all__ = [
    "ArrayDataset",
    "AugmentConfig",
    "AuditConfig",
    "CondensationResult",
    "ConfigError",
    "ContinualConfig",
    "DPConfig",
    "DataConfig",
    "DatasetNotFoundError",
    "DatasetSpec",
    "DatasetSplits",
    "DistillConfig",
    "DistributionMatching",
    "EvalConfig",
    "EvalResult",
    "FederatedConfig",
    "LossHook",
    "MeanStatistics",
    "RealStatistics",
    "SiameseAugment",
    "SyntheticSet",
    "SyntheticSetError",
    "evaluate_synthetic",
    "get_model",
    "load_dataset",
    "load_toml",
    "parse_config",
    "select_coreset",
    "train_model",
    *_LAZY,
]


def __getattr__(name: str) -> object:
    return lazy_attribute(__name__, _LAZY, name)
