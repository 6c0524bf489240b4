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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedcond.config import ConfigError, FederatedConfig
from fedcond.data.registry import DatasetSplits
from fedcond.devices import keep_freed_cpu_memory, resolve_device
from fedcond.federated.accounting import CountingGrid
from fedcond.federated.attacks import AttackConfig
from fedcond.federated.baselines import baseline_strategy
from fedcond.federated.checkpoint import CHECKPOINTS, CheckpointMismatch, RunCheckpoint
from fedcond.federated.client import check_partition, federated_test_set, load_splits
from fedcond.federated.job import FederatedJob, job_from_mapping, job_to_mapping
from fedcond.federated.nodes import wait_for_nodes
from fedcond.federated.records import model_from_record, model_to_record
from fedcond.federated.robust import ServerReference, server_reference
from fedcond.federated.rounds import RoundRecorder, fedcond_state, restore_fedcond
from fedcond.federated.strategy import FedCond
from fedcond.federated.uploads import UPLOADS, UploadStore
from fedcond.metrics_file import write_metrics
from fedcond.models import get_model
from fedcond.plots import save_line_plot
from fedcond.training import accuracy

__all__ = ["FederatedReport", "app", "run_federated", "save_accuracy_curves", "serve"]

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
    #: the simulated attack (``None``: none) and how many clients ran it
    attack: str | None = None
    attackers: int = 0
    #: every round ran (a checkpoint's partial report says false)
    complete: bool = True
    #: the round a resumed run continued after (0: it ran from the start)
    resumed_after: int = 0

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
            # replies over every round: accepted, refused by the client's policy, dropped as faulty
            **{key: sum(_count(h.get(key)) for h in self.history) for key in ("accepted", "refused", "dropped")},
            "clients": _latest_client_reports(self.history),
            "config": job_to_mapping(self.job),
            "attack": self.attack,
            "attackers": self.attackers,
            "complete": self.complete,
            "resumed_after": self.resumed_after,
            # DP-DM: the federation's epsilon (max over every node's latest report, any round)
            **({"epsilon": self.epsilon, "delta": fed.dp.delta} if fed.dp is not None else {}),
        }


def _latest_client_reports(history: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each node's latest reply facts (release-gate results, set size, or its error), with the round."""
    latest: dict[str, dict[str, Any]] = {}
    for entry in history:
        for node, facts in (entry.get("clients") or {}).items():
            latest[str(node)] = {"round": entry["round"], **facts}
    return latest


def _count(value: Any) -> int:
    """A history entry's count: a number, or the size of a node -> reason map."""
    if isinstance(value, dict):
        return len(value)
    return int(value or 0)


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


def run_identity(job: FederatedJob, attack: AttackConfig | None = None) -> dict[str, Any]:
    """What makes a run this run, for checkpoints: the job's flat config (not its folder or
    device) and the simulated attack."""
    flat = {k: v for k, v in job_to_mapping(job).items() if k not in ("out", "device", "resume")}
    flat["attack"] = None if attack is None else f"{attack.kind}:{attack.attackers}"
    return flat


def reference_for_job(splits: DatasetSplits, fed: FederatedConfig) -> ServerReference | None:
    """The robust rule's reference drawn from the server's own training split (``robust.reference_per_class``;
    ``None`` at 0), with the seed the ServerApp uses."""
    per_class = fed.robust.reference_per_class
    if per_class == 0:
        return None
    reference = server_reference(
        splits.train.images,
        splits.train.labels,
        per_class=per_class,
        num_classes=splits.spec.num_classes,
        generator=torch.Generator().manual_seed(fed.seed * 1000 + 699),
    )
    logger.info(
        "the robust rule judges client classes against %d of the server's own training images per class",
        per_class,
    )
    return reference


def run_federated(
    grid: Grid,
    job: FederatedJob,
    *,
    attack: AttackConfig | None = None,
    checkpoint: RunCheckpoint | None = None,
    on_round: Callable[[FederatedReport], None] | None = None,
) -> FederatedReport:
    """Run ``job`` on ``grid`` (simulation or deployment) and report.

    Parameters
    ----------
    grid : Grid
        The Grid the ServerApp received.
    job : FederatedJob
        Dataset, strategy and all settings; sent to the clients in every train message.
    attack : AttackConfig | None
        The attack the simulation driver installed on its clients (recorded, not run here).
    checkpoint : RunCheckpoint | None
        Written after every round (global model, strategy state, ``metrics.json`` with
        ``"complete": false``); when it already holds rounds of this job, the run continues
        after the last of them.
    on_round : Callable | None
        Called after every round with the partial report (``complete`` false).
    """
    fed = job.federated
    splits = load_splits(job.data)
    spec = splits.spec
    # the clients split the data by node count (each node takes one partition): check it once here
    check_partition(job, num_partitions=len(list(grid.get_node_ids())) or fed.num_clients)
    device = resolve_device(job.device)
    counting = CountingGrid(grid)
    if fed.strategy == "fedcond":
        uploads = None
        if job.out is not None:  # what left the clients, kept exactly as received
            uploads = UploadStore(
                Path(job.out) / UPLOADS,
                spec=spec,
                max_images=fed.distill.ipc * spec.num_classes,
                factor=fed.distill.factor,
            )
        strategy = FedCond(
            spec=spec,
            config=fed,
            device=device,
            min_available_nodes=max(1, fed.min_available_nodes),
            uploads=uploads,
            training_checkpoints=None if checkpoint is None else checkpoint.folder,
            reference=reference_for_job(splits, fed),
        )
    else:
        strategy = baseline_strategy(fed)
        # Flower's baselines wait for their nodes without a deadline
        wait_for_nodes(counting, minimum=max(1, fed.min_available_nodes), timeout=fed.node_wait_timeout)
    initial_arrays = model_to_record(get_model(fed.model, spec, generator=torch.Generator().manual_seed(fed.seed)))
    saved = checkpoint.load() if checkpoint is not None else None
    offset, prefix, earlier_wall = 0, [], 0.0
    if saved is not None:
        offset, prefix, initial_arrays = saved.completed_round, saved.history, saved.arrays
        earlier_wall = float(saved.metrics.get("wall_seconds") or 0.0)
        if isinstance(strategy, FedCond):
            restore_fedcond(strategy, saved.strategy_state, saved.strategy_arrays)
        logger.info("%s: resuming after round %d of %d", fed.strategy, offset, fed.rounds)
    recorder = RoundRecorder(strategy, offset=offset)
    start = time.perf_counter()
    evaluate = _evaluate_fn(job)

    def report_until(last_round: int, *, complete: bool) -> FederatedReport:
        return _report(
            job, strategy, recorder, counting, prefix, offset=offset, last_round=last_round, complete=complete,
            wall=earlier_wall + time.perf_counter() - start, grid=grid, attack=attack,
        )

    def after_round(server_round: int, arrays: ArrayRecord) -> None:
        partial = report_until(server_round, complete=server_round == fed.rounds)
        if checkpoint is not None:
            state, state_arrays = fedcond_state(strategy) if isinstance(strategy, FedCond) else ({}, {})
            checkpoint.save(
                completed_round=server_round,
                arrays=arrays,
                history=partial.history,
                metrics=partial.metrics(),
                strategy_state=state,
                strategy_arrays=state_arrays,
                complete=partial.complete,
            )
        if on_round is not None:
            on_round(partial)

    if offset < fed.rounds:
        result = recorder.start(
            grid=counting,
            initial_arrays=initial_arrays,
            num_rounds=fed.rounds - offset,
            timeout=fed.round_timeout,
            train_config=ConfigRecord(job_to_mapping(job)),
            evaluate_fn=recorder.evaluate_fn(evaluate, after_round=after_round),
        )
        final_arrays = result.arrays
    else:
        final_arrays = initial_arrays
    report = report_until(fed.rounds, complete=True)
    report.final_arrays = final_arrays
    _warn_about_the_finished_run(report, fed)
    logger.info(
        "%s finished: test accuracy %s, uplink %d B, downlink %d B, %.1fs",
        fed.strategy,
        "n/a" if report.test_accuracy is None else f"{report.test_accuracy:.4f}",
        report.uplink_bytes,
        report.downlink_bytes,
        report.wall_seconds,
    )
    return report


def _report(
    job: FederatedJob,
    strategy: Any,
    recorder: RoundRecorder,
    counting: CountingGrid,
    prefix: list[dict[str, Any]],
    *,
    offset: int,
    last_round: int,
    complete: bool,
    wall: float,
    grid: Grid,
    attack: AttackConfig | None,
) -> FederatedReport:
    """The report of rounds ``0..last_round``: ``prefix`` (a checkpoint's history) for rounds up
    to ``offset``, the recorder, the traffic ledger and FedCond's round reports for the rest."""
    fed = job.federated
    traffic = counting.traffic
    history: list[dict[str, Any]] = [dict(h) for h in prefix if h["round"] <= offset]
    uplink_total = history[-1]["cumulative_uplink_bytes"] if history else 0
    downlink_total = history[-1]["cumulative_downlink_bytes"] if history else 0
    fedcond_rounds = {r.server_round: r.as_dict() for r in getattr(strategy, "rounds", [])}
    # a baseline's replies dropped by its ReplyScreen (malformed structure or weight), by round
    screened: dict[int, dict[int, str]] = getattr(strategy, "dropped", {})
    for server_round in range(len(history), last_round + 1):
        t = traffic.get(server_round)
        up, down = (t.uplink_bytes, t.downlink_bytes) if t else (0, 0)
        uplink_total += up
        downlink_total += down
        evaluated = recorder.accuracy.get(server_round)
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
            if fed.strategy != "fedcond":  # FedCond's own report (below) also counts validation drops
                dropped = {**t.errors, **screened.get(server_round, {})}
                entry["accepted"] = t.replies_received - len(t.refused) - len(dropped)
                entry["refused"] = {str(k): v for k, v in t.refused.items()}
                entry["dropped"] = {str(k): v for k, v in dropped.items()}
        if server_round in fedcond_rounds:
            entry.update({k: v for k, v in fedcond_rounds[server_round].items() if k != "round"})
        train_metrics = recorder.train_metrics.get(server_round)
        if fed.strategy != "fedcond" and server_round > 0:
            entry["trained"] = recorder.trained.get(server_round, False)
        if train_metrics is not None and fed.strategy != "fedcond":
            entry["client_metrics"] = {k: v for k, v in train_metrics.items() if isinstance(v, (int, float))}
        history.append(entry)
    accuracies = [h["test_accuracy"] for h in history if h["test_accuracy"] is not None]
    trained_rounds = sum(1 for h in history if h.get("trained"))
    nodes = len(list(grid.get_node_ids()))
    return FederatedReport(
        job=job,
        test_accuracy=accuracies[-1] if accuracies and trained_rounds else None,
        uplink_bytes=uplink_total,
        downlink_bytes=downlink_total,
        wall_seconds=wall,
        history=history,
        num_nodes=nodes,
        trained_rounds=trained_rounds,
        epsilon=getattr(strategy, "federation_epsilon", None),
        attack=None if attack is None or attack.attackers == 0 else attack.kind,
        attackers=0 if attack is None else attack.attackers,
        complete=complete,
        resumed_after=offset,
    )


def _warn_about_the_finished_run(report: FederatedReport, fed: FederatedConfig) -> None:
    """Say once, at the end of a run, why it trained no model or split the data unexpectedly."""
    history = report.history
    if report.trained_rounds == 0:
        reasons = sorted(
            {
                reason
                for h in history
                for key in ("refused", "dropped")
                if isinstance(h.get(key), dict)
                for reason in h[key].values()
            }
        )
        alarms = [h["robust_alarm"] for h in history if h.get("robust_alarm")]
        if alarms:
            logger.error(
                "%s: no round trained the global model: the robust rule failed closed (%s); "
                "test_accuracy is reported as null, not the untrained model's accuracy",
                fed.strategy,
                alarms[0],
            )
        else:
            logger.error(
                "%s: no round trained the global model (every reply was refused, dropped or missing%s); "
                "test_accuracy is reported as null, not the untrained model's accuracy",
                fed.strategy,
                f": {reasons[0]}" if reasons else "",
            )
    if report.num_nodes != fed.num_clients:
        # under `flwr run` the federation's num-supernodes decides, and each node takes one partition
        logger.warning(
            "%d client nodes took part but the config says num-clients=%d: the data was split %d ways "
            "(with `flwr run`, set both, e.g. --federation-config \"num-supernodes=%d\")",
            report.num_nodes, fed.num_clients, report.num_nodes, fed.num_clients,
        )


app = ServerApp()


def serve(
    grid: Grid, job: FederatedJob, *, on_round: Callable[[FederatedReport], None] | None = None
) -> FederatedReport:
    """The ``flwr run`` path: run ``job`` on ``grid``, crash-safe when ``job.out`` is set.

    With an ``out`` folder, every round is checkpointed under ``OUT/checkpoints/STRATEGY/`` and
    ``OUT/metrics.json`` is rewritten with ``"complete": false`` until the last round; the
    final ``metrics.json`` and ``accuracy.png`` follow. ``job.resume`` continues a killed run in
    ``out`` after its last checkpointed round. ``on_round`` is called after each round's files.

    Raises
    ------
    ValueError
        Before any round runs: ``out`` already holds a run and ``resume`` is false; ``resume``
        with no run (or a finished one) in ``out``; a checkpoint of another job (the message
        names the first differing key).
    """
    checkpoint, after_round = None, on_round
    if job.out is not None:
        out = Path(job.out)
        holds_run = (out / "metrics.json").exists()
        # refused before any round runs, so neither the earlier results nor this run's time is lost
        if holds_run and not job.resume:
            raise ValueError(
                f"out={str(job.out)!r} already holds a run (metrics.json); continue a killed run with "
                "--run-config 'resume=true', choose another out folder (--run-config 'out=\"...\"') "
                "or remove the earlier one"
            )
        if job.resume and not holds_run:
            raise ValueError(f"resume=true: out={str(job.out)!r} holds no run to continue (no metrics.json)")
        checkpoint = RunCheckpoint(out / CHECKPOINTS / job.federated.strategy, identity=run_identity(job))
        if job.resume:
            try:
                saved = checkpoint.load()
            except CheckpointMismatch as exc:
                raise ValueError(f"resume=true: {exc}") from None
            if saved is not None and saved.complete:
                raise ValueError(f"resume=true: the run in out={str(job.out)!r} is finished; nothing to continue")

        def after_round(partial: FederatedReport) -> None:
            write_metrics(out, partial.metrics())  # "complete": false until the last round
            if on_round is not None:
                on_round(partial)

    report = run_federated(grid, job, checkpoint=checkpoint, on_round=after_round)
    if job.out is not None:
        logger.info("wrote %s", write_metrics(job.out, report.metrics()))
        save_accuracy_curves(
            {job.federated.strategy: report.history},
            Path(job.out) / "accuracy.png",
            job=job,
            num_clients=report.num_nodes,
        )
    return report


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``flwr run .`` entry point: the job comes from ``context.run_config`` (see :func:`serve`)."""
    keep_freed_cpu_memory()  # a process entry point, like the CLI (fedcond.devices)
    try:
        job = job_from_mapping(dict(context.run_config))
    except ConfigError as exc:  # one line that names the key, above Flower's traceback
        logger.error("fedcond: bad --run-config: %s", exc)
        raise
    serve(grid, job)
