"""Federated condensation on Flower: clients distill, the server aggregates synthetic sets.

Importing this package imports Flower; the engine (:mod:`fedcond.distill`) never does. The
simulation drivers (``simulate``, ``simulate_in_process``) load Flower's simulation engine, so
they are imported on first access.
"""

from fedcond.federated.accounting import CountingGrid, RoundTraffic
from fedcond.federated.aggregation import AggregatedSet, aggregate_sets
from fedcond.federated.baselines import baseline_strategy
from fedcond.federated.client import CondenseOutcome, client_partition, condense_partition, local_train
from fedcond.federated.job import STRATEGIES, FederatedJob, job_from_mapping, job_to_mapping
from fedcond.federated.proximal import ProximalTerm
from fedcond.federated.server_app import FederatedReport, run_federated
from fedcond.federated.strategy import FedCond, RoundReport
from fedcond.federated.validation import ClientSet, ReplyRejected, validate_reply
from fedcond.lazy import lazy_attribute, lazy_dir

_LAZY = {
    "InProcessGrid": "fedcond.federated.inprocess",
    "SimulationError": "fedcond.federated.simulation",
    "simulate": "fedcond.federated.simulation",
    "simulate_in_process": "fedcond.federated.simulation",
}

__all__ = [
    "STRATEGIES",
    "AggregatedSet",
    "ClientSet",
    "CondenseOutcome",
    "CountingGrid",
    "FedCond",
    "FederatedJob",
    "FederatedReport",
    "ProximalTerm",
    "ReplyRejected",
    "RoundReport",
    "RoundTraffic",
    "aggregate_sets",
    "baseline_strategy",
    "client_partition",
    "condense_partition",
    "job_from_mapping",
    "job_to_mapping",
    "local_train",
    "run_federated",
    "validate_reply",
]
__all__ += list(_LAZY)


def __getattr__(name: str) -> object:
    return lazy_attribute(__name__, _LAZY, name)


def __dir__() -> list[str]:
    """The module's names, the lazy ones included (for ``dir()`` and completion)."""
    return lazy_dir(globals(), _LAZY)
