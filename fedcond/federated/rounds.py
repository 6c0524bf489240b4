"""Round bookkeeping around any strategy: what each round produced, and resuming at round R + 1.

:class:`RoundRecorder` wraps a Flower strategy (FedCond or a baseline) the way Flower's DP
wrappers do: it forwards every step, renumbering rounds by ``offset`` (a resumed run's
``start()`` counts from 1 again, while clients' seeds, sampling and the traffic ledger need the
run's own round numbers), and records per round the aggregated train metrics and whether the
round produced a new global model. :meth:`RoundRecorder.evaluate_fn` wraps the centralised
evaluation, which Flower calls after every round: it records the accuracy and then calls
``after_round`` (the checkpoint hook).

:func:`fedcond_state` / :func:`restore_fedcond` turn the FedCond strategy's cross-round state
(the union's client sets, their rounds, the round reports, the nodes' epsilons) into JSON plus
arrays for :class:`fedcond.federated.checkpoint.RunCheckpoint`, and back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedcond.distill.synthetic import SyntheticSet
from fedcond.federated.strategy import FedCond, RoundReport
from fedcond.federated.validation import ClientSet

__all__ = ["RoundRecorder", "fedcond_state", "restore_fedcond"]


class RoundRecorder(Strategy):
    """Forward to ``inner`` with rounds shifted by ``offset``; record what each round produced.

    Attributes
    ----------
    train_metrics : dict[int, MetricRecord]
        Aggregated train metrics by (run) round, for rounds that returned any.
    trained : dict[int, bool]
        Whether the round returned new global arrays.
    accuracy : dict[int, MetricRecord | None]
        The centralised evaluation by round.
    """

    def __init__(self, inner: Strategy, *, offset: int = 0) -> None:
        self.inner = inner
        self.offset = offset
        self.train_metrics: dict[int, MetricRecord] = {}
        self.trained: dict[int, bool] = {}
        self.accuracy: dict[int, MetricRecord | None] = {}

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.inner.aggregate_train(server_round + self.offset, replies)
        self.trained[server_round + self.offset] = arrays is not None
        if metrics is not None:
            self.train_metrics[server_round + self.offset] = metrics
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round + self.offset, replies)

    def evaluate_fn(
        self,
        evaluate: Callable[[int, ArrayRecord], MetricRecord | None],
        *,
        after_round: Callable[[int, ArrayRecord], None] | None = None,
    ) -> Callable[[int, ArrayRecord], MetricRecord | None]:
        """``evaluate`` renumbered and recorded; ``after_round(round, arrays)`` runs after each round.

        A resumed run's round 0 (the restored model, already evaluated) is not evaluated again.
        """

        def wrapped(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            run_round = server_round + self.offset
            if server_round == 0 and self.offset > 0:
                return None
            result = evaluate(run_round, arrays)
            self.accuracy[run_round] = result
            if run_round > 0 and after_round is not None:
                after_round(run_round, arrays)
            return result

        return wrapped


def _int_keys(mapping: dict[str, Any]) -> dict[int, Any]:
    return {int(k): v for k, v in mapping.items()}


def fedcond_state(strategy: FedCond) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """FedCond's cross-round state as (JSON-ready values, arrays)."""
    arrays: dict[str, np.ndarray] = {}
    sets = []
    for i, (node_id, s) in enumerate(sorted(strategy.client_sets.items())):
        arrays[f"set{i}-images"] = s.synthetic.images.numpy()
        arrays[f"set{i}-labels"] = s.synthetic.labels.numpy()
        arrays[f"set{i}-counts"] = s.class_counts.numpy()
        sets.append({"node_id": node_id, "metrics": s.metrics, "meta": s.synthetic.meta, "index": i})
    reports = [dataclasses.asdict(r) for r in strategy.rounds]
    state = {
        "client_sets": sets,
        "set_round": {str(k): v for k, v in strategy.set_round.items()},
        "node_epsilon": {str(k): v for k, v in strategy.node_epsilon.items()},
        "rounds": reports,
    }
    return state, arrays


def restore_fedcond(strategy: FedCond, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Put :func:`fedcond_state`'s output back into a freshly built ``strategy``."""
    strategy.client_sets = {}
    for entry in state.get("client_sets", []):
        i = entry["index"]
        synthetic = SyntheticSet(
            torch.from_numpy(arrays[f"set{i}-images"].copy()),
            torch.from_numpy(arrays[f"set{i}-labels"].copy()),
            dict(entry.get("meta", {})),
        )
        strategy.client_sets[int(entry["node_id"])] = ClientSet(
            int(entry["node_id"]), synthetic, torch.from_numpy(arrays[f"set{i}-counts"].copy()), dict(entry["metrics"])
        )
    strategy.set_round = _int_keys(state.get("set_round", {}))
    strategy.node_epsilon = _int_keys(state.get("node_epsilon", {}))
    reports = []
    names = {f.name for f in dataclasses.fields(RoundReport)}
    # node-keyed maps (JSON turned their int keys into strings)
    dict_fields = {f.name for f in dataclasses.fields(RoundReport) if str(f.type).startswith("dict[int")}
    for raw in state.get("rounds", []):
        values = {k: v for k, v in raw.items() if k in names}
        for name in dict_fields & set(values):
            values[name] = _int_keys(values[name])
        reports.append(RoundReport(**values))
    strategy.rounds = reports
