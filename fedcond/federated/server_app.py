"""The Flower ``ServerApp`` and :func:`run_federated`, the server side of every engine.

``run_federated(grid, job)`` builds the strategy (:class:`FedCond`, or Flower's FedAvg/FedProx),
wraps the grid in a :class:`CountingGrid`, runs the strategy's ``start()`` loop with a
centralised evaluation on the real test set, and returns a :class:`FederatedReport` whose
``metrics()`` is the ``metrics.json`` content of DESIGN.md section 3.

The module-level ``app`` is what ``flwr run .`` (``[tool.flwr.app.components]``) loads: it
reads the job from ``context.run_config`` (``[tool.flwr.app.config]`` plus ``--run-config``
overrides) and writes ``metrics.json`` to the ``out`` folder when one is configured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedcond.config import ConfigError
from fedcond.devices import keep_freed_cpu_memory, resolve_device
from fedcond.distill.evaluate import accuracy
from fedcond.federated.accounting import CountingGrid
from fedcond.federated.baselines import baseline_strategy
from fedcond.federated.client import check_partition, federated_test_set, load_splits
from fedcond.federated.job import FederatedJob, job_from_mapping, job_to_mapping
from fedcond.federated.records import model_from_record, model_to_record
from fedcond.federated.strategy import FedCond
from fedcond.metrics_file import write_metrics
from fedcond.models import get_model
from fedcond.plots import save_line_plot

__all__ = ["FederatedReport", "app", "run_federated", "save_accuracy_curves"]

logger = logging.getLogger(__name__)

TEST_ACCURACY = "test-accuracy"


@dataclass
class FederatedReport:
    """Outcome of one federated run (see :meth:`metrics`)."""

    job: FederatedJob
    test_accuracy: float | None
    uplink_bytes: int
    downlink_bytes: int
    wall_seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    num_nodes: int = 0
    final_arrays: ArrayRecord | None = None
    trained_rounds: int = 0
    epsilon: float | None = None

    def metrics(self) -> dict[str, Any]:
        """The DESIGN.md ``fedcond simulate`` keys plus the flattened config."""
        fed = self.job.federated
        return {
            "strategy": fed.strategy,
            "dataset": self.job.data.dataset,
            "num_clients": self.num_nodes or fed.num_clients,
            "partition": fed.partition,
            "alpha": fed.alpha,
            "rounds": fed.rounds,
            "test_accuracy": self.test_accuracy,
            "trained_rounds": self.trained_rounds,
            "uplink_bytes": self.uplink_bytes,
            "downlink_bytes": self.downlink_bytes,
            "wall_seconds": self.wall_seconds,
            "history": self.history,
            "config": job_to_mapping(self.job),
            # DP-DM: the federation's epsilon (max over every node's latest report, any round)
            **({"epsilon": self.epsilon, "delta": fed.dp.delta} if fed.dp is not None else {}),
        }


def save_accuracy_curves(
    histories: Mapping[str, list[dict[str, Any]]], path: str | Path, *, job: FederatedJob, num_clients: int
) -> Path:
    """``accuracy.png``: server test accuracy per round, one curve per run (``fedcond simulate``
    and the ``flwr run`` ServerApp draw the same figure)."""
    series = {}
    for name, history in histories.items():
        points = [(h["round"], h["test_accuracy"]) for h in history if h["test_accuracy"] is not None]
        series[name] = ([p[0] for p in points], [p[1] for p in points])
    fed = job.federated
    return save_line_plot(
        series,
        path,
        xlabel="round",
        ylabel="test accuracy",
        title=f"{job.data.dataset}, {num_clients} clients: {fed.partition}"
        + (f" ({fed.alpha})" if fed.partition == "dirichlet" else ""),
        integer_x=True,
    )


def _evaluate_fn(job: FederatedJob):  # noqa: ANN202 - Flower's evaluate_fn signature
    test = federated_test_set(job)
    device = resolve_device(job.device)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if len(arrays) == 0:
            return None
        model = model_from_record(get_model(job.federated.model, test.spec), arrays)
        return MetricRecord({TEST_ACCURACY: accuracy(model, test, device=device)})

    return evaluate


def run_federated(grid: Grid, job: FederatedJob) -> FederatedReport:
    """Run ``job`` on ``grid`` (simulation or deployment) and report.

    Parameters
    ----------
    grid : Grid
        The Grid the ServerApp received.
    job : FederatedJob
        Dataset, strategy and all settings; sent to the clients in every train message.
    """
    fed = job.federated
    splits = load_splits(job.data)
    spec = splits.spec
    # the clients split the data by node count (each node takes one partition): check it once here
    check_partition(job, num_partitions=len(list(grid.get_node_ids())) or fed.num_clients)
    device = resolve_device(job.device)
    counting = CountingGrid(grid)
    if fed.strategy == "fedcond":
        strategy = FedCond(spec=spec, config=fed, device=device, min_available_nodes=max(1, fed.min_available_nodes))
    else:
        strategy = baseline_strategy(fed)
    initial = get_model(fed.model, spec, generator=torch.Generator().manual_seed(fed.seed))
    start = time.perf_counter()
    result = strategy.start(
        grid=counting,
        initial_arrays=model_to_record(initial),
        num_rounds=fed.rounds,
        timeout=fed.round_timeout,
        train_config=ConfigRecord(job_to_mapping(job)),
        evaluate_fn=_evaluate_fn(job),
    )
    wall = time.perf_counter() - start
    traffic = counting.traffic
    history: list[dict[str, Any]] = []
    uplink_total = downlink_total = 0
    fedcond_rounds = {r.server_round: r.as_dict() for r in getattr(strategy, "rounds", [])}
    for server_round in range(0, fed.rounds + 1):
        t = traffic.get(server_round)
        up, down = (t.uplink_bytes, t.downlink_bytes) if t else (0, 0)
        uplink_total += up
        downlink_total += down
        evaluated = result.evaluate_metrics_serverapp.get(server_round)
        entry: dict[str, Any] = {
            "round": server_round,
            "test_accuracy": float(evaluated[TEST_ACCURACY]) if evaluated is not None else None,
            "uplink_bytes": up,
            "downlink_bytes": down,
            "cumulative_uplink_bytes": uplink_total,
            "cumulative_downlink_bytes": downlink_total,
        }
        if t is not None:
            entry["messages_sent"] = t.messages_sent
            entry["replies_received"] = t.replies_received
        if server_round in fedcond_rounds:
            entry.update({k: v for k, v in fedcond_rounds[server_round].items() if k != "round"})
        train_metrics = result.train_metrics_clientapp.get(server_round)
        if train_metrics is not None and fed.strategy != "fedcond":
            entry["client_metrics"] = {k: v for k, v in train_metrics.items() if isinstance(v, (int, float))}
        history.append(entry)
    accuracies = [h["test_accuracy"] for h in history if h["test_accuracy"] is not None]
    if fed.strategy == "fedcond":
        trained_rounds = sum(1 for r in getattr(strategy, "rounds", []) if r.trained)
    else:  # Flower's FedAvg/FedProx record client train metrics only for rounds they aggregated
        trained_rounds = sum(1 for r in range(1, fed.rounds + 1) if result.train_metrics_clientapp.get(r) is not None)
    if trained_rounds == 0:
        reasons = sorted({reason for r in getattr(strategy, "rounds", []) for reason in r.dropped.values()})
        logger.error(
            "%s: no round trained the global model (every reply was dropped or missing%s); "
            "test_accuracy is reported as null, not the untrained model's accuracy",
            fed.strategy,
            f": {reasons[0]}" if reasons else "",
        )
    nodes = len(list(grid.get_node_ids()))
    if nodes != fed.num_clients:
        # under `flwr run` the federation's num-supernodes decides, and each node takes one partition
        logger.warning(
            "%d client nodes took part but the config says num-clients=%d: the data was split %d ways "
            "(with `flwr run`, set both, e.g. --federation-config \"num-supernodes=%d\")",
            nodes, fed.num_clients, nodes, fed.num_clients,
        )
    report = FederatedReport(
        job=job,
        test_accuracy=accuracies[-1] if accuracies and trained_rounds else None,
        uplink_bytes=uplink_total,
        downlink_bytes=downlink_total,
        wall_seconds=wall,
        history=history,
        num_nodes=nodes,
        final_arrays=result.arrays,
        trained_rounds=trained_rounds,
        epsilon=getattr(strategy, "federation_epsilon", None),
    )
    logger.info(
        "%s finished: test accuracy %s, uplink %d B, downlink %d B, %.1fs",
        fed.strategy,
        "n/a" if report.test_accuracy is None else f"{report.test_accuracy:.4f}",
        report.uplink_bytes,
        report.downlink_bytes,
        wall,
    )
    return report


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``flwr run .`` entry point: the job comes from ``context.run_config``."""
    keep_freed_cpu_memory()  # a process entry point, like the CLI (fedcond.devices)
    try:
        job = job_from_mapping(dict(context.run_config))
    except ConfigError as exc:  # one line that names the key, above Flower's traceback
        logger.error("fedcond: bad --run-config: %s", exc)
        raise
    if job.out is not None and (Path(job.out) / "metrics.json").exists():
        # refused before any round runs, so neither the earlier results nor this run's time is lost
        raise ValueError(
            f"out={str(job.out)!r} already holds a run (metrics.json); choose another out folder "
            "(--run-config 'out=\"...\"') or remove the earlier one"
        )
    report = run_federated(grid, job)
    if job.out is not None:
        logger.info("wrote %s", write_metrics(job.out, report.metrics()))
        save_accuracy_curves(
            {job.federated.strategy: report.history},
            Path(job.out) / "accuracy.png",
            job=job,
            num_clients=report.num_nodes,
        )
