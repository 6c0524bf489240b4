"""Weight-averaging baselines on the same partitions, model and test set: Flower's own strategies.

FedAvg and FedProx, and Flower's Byzantine-robust rules FedMedian, FedTrimmedAvg, Krum,
MultiKrum and Bulyan, come from :mod:`flwr.serverapp.strategy` unchanged; only their sampling
settings (and ``trimmed_beta`` / ``byzantine_nodes``) are derived from :class:`FederatedConfig`.
Each is wrapped in a :class:`~fedcond.federated.screening.ReplyScreen`, which drops a reply whose
structure or weight would make Flower's aggregation raise (and end the run) or break, before
Flower aggregates. Their clients run the ``train`` handler of :mod:`fedcond.federated.client_app`
(local SGD, plus the proximal term FedProx asks for).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum, MultiKrum

from fedcond.config import FederatedConfig
from fedcond.federated.screening import ReplyScreen

__all__ = ["BASELINES", "baseline_strategy"]

#: strategy name -> builder from (Flower's common settings, the job's config)
BASELINES: dict[str, Callable[[dict[str, Any], FederatedConfig], FedAvg]] = {
    "fedavg": lambda common, c: FedAvg(**common),
    "fedprox": lambda common, c: FedProx(**common, proximal_mu=c.proximal_mu),
    "fedmedian": lambda common, c: FedMedian(**common),
    "fedtrimmedavg": lambda common, c: FedTrimmedAvg(**common, beta=c.trimmed_beta),
    "krum": lambda common, c: Krum(**common, num_malicious_nodes=c.byzantine_nodes),
    "multikrum": lambda common, c: MultiKrum(
        **common, num_malicious_nodes=c.byzantine_nodes, num_nodes_to_select=max(1, c.num_clients - c.byzantine_nodes)
    ),
    "bulyan": lambda common, c: Bulyan(**common, num_malicious_nodes=c.byzantine_nodes),
}


def baseline_strategy(config: FederatedConfig) -> ReplyScreen:
    """Flower's strategy named ``config.strategy`` (:data:`BASELINES`), evaluated on the server only.

    Returns
    -------
    ReplyScreen
        The strategy (its ``inner``) behind the reply screen.

    Raises
    ------
    ValueError
        For a name not in :data:`BASELINES`.
    """
    if config.strategy not in BASELINES:
        raise ValueError(f"no baseline strategy named {config.strategy!r} ({', '.join(BASELINES)})")
    common = {
        "fraction_train": config.fraction_train,
        "fraction_evaluate": 0.0,  # centralised evaluation on the real test set
        "min_train_nodes": 1,
        "min_evaluate_nodes": 0,
        "min_available_nodes": max(1, config.min_available_nodes),
    }
    return ReplyScreen(BASELINES[config.strategy](common, config))
