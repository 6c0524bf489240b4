"""Weight-averaging baselines on the same partitions, model and test set: Flower's own strategies.

FedAvg and FedProx come from :mod:`flwr.serverapp.strategy` unchanged; only their sampling
settings are derived from :class:`FederatedConfig`. Their clients run the ``train`` handler of
:mod:`fedcond.federated.client_app` (local SGD, plus the proximal term FedProx asks for).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg, FedProx, Strategy

from fedcond.config import FederatedConfig

__all__ = ["baseline_strategy"]


def baseline_strategy(config: FederatedConfig) -> Strategy:
    """Flower's ``FedAvg`` or ``FedProx`` (``config.strategy``), evaluated on the server only.

    Raises
    ------
    ValueError
        For a strategy name other than ``fedavg`` or ``fedprox``.
    """
    common = {
        "fraction_train": config.fraction_train,
        "fraction_evaluate": 0.0,  # centralised evaluation on the real test set
        "min_train_nodes": 1,
        "min_evaluate_nodes": 0,
        "min_available_nodes": max(1, config.min_available_nodes),
    }
    if config.strategy == "fedavg":
        return FedAvg(**common)
    if config.strategy == "fedprox":
        return FedProx(**common, proximal_mu=config.proximal_mu)
    raise ValueError(f"no baseline strategy named {config.strategy!r} (fedavg or fedprox)")
