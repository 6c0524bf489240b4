"""``FedCond``: a Flower strategy whose clients send synthetic sets instead of weights.

It implements Flower's :class:`flwr.serverapp.strategy.Strategy` steps and is driven by the
inherited ``start()`` loop:

- ``configure_train`` samples nodes and sends each a ``train.condense`` message with the
  condensation config; in multi-round mode from round 2 on it also sends the global model,
  which clients use as DM's embedding network;
- ``aggregate_train`` validates every reply (:func:`validate_reply`), drops and logs bad ones,
  keeps each client's newest accepted set (a client that fails later keeps its earlier set in
  the union: nothing already aggregated is lost), and, when at least ``min_reply_fraction``
  of the sampled clients replied validly, trains a fresh global model on the class-weighted
  union (:func:`train_global_model`) and returns its arrays;
- evaluation is centralised on the server's real test set (``start(evaluate_fn=...)``), so
  ``configure_evaluate`` sends nothing.

Hostile clients (``docs/robustness.md``): replies are checked against pixel bounds, a per-class
image cap and a claimed-count bound; the union holds one set per connected node (a node that
leaves takes its set with it) and forgets sets older than ``robust.max_set_age`` rounds; the
robust rule (:func:`fedcond.federated.robust.robust_sets`) caps claims and removes outliers
before aggregation; a server training that meets a non-finite value keeps the previous model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedcond.config import FederatedConfig
from fedcond.data.registry import DatasetSpec
from fedcond.federated.aggregation import AggregatedSet, aggregate_sets
from fedcond.federated.nodes import wait_for_nodes
from fedcond.federated.records import (
    CONDENSE_ACTION,
    CONFIG_KEY,
    EPSILON,
    METRICS_KEY,
    MODEL_KEY,
    POLICY_REFUSED,
    SERVER_ROUND,
    client_report,
    model_to_record,
)
from fedcond.federated.robust import ServerReference, robust_sets
from fedcond.federated.server_training import NonFiniteTraining, train_global_model
from fedcond.federated.untrusted import client_text
from fedcond.federated.uploads import UploadStore
from fedcond.federated.validation import (
    DEFAULT_PIXEL_MARGIN,
    PIXEL_MARGINS,
    ClientSet,
    ReplyRejected,
    pixel_bounds,
    validate_reply,
)
from fedcond.training import TrainingCheckpointMismatch

__all__ = ["FedCond", "RoundReport"]

logger = logging.getLogger(__name__)


@dataclass
class RoundReport:
    """What happened in one FedCond round (for ``metrics.json``'s history)."""

    server_round: int
    sampled: int = 0
    accepted: list[int] = field(default_factory=list)
    dropped: dict[int, str] = field(default_factory=dict)
    #: nodes that declined the request by their own policy (node -> the rule and reason)
    refused: dict[int, str] = field(default_factory=dict)
    #: per-node facts of this round's replies (release-gate results, set size)
    clients: dict[int, dict[str, Any]] = field(default_factory=dict)
    union_images: int = 0
    trained: bool = False
    server_seconds: float = 0.0
    client_metrics: dict[str, float] = field(default_factory=dict)
    #: robust rule: sets removed from the union (node -> reason) and sets changed in it
    rejected: dict[int, str] = field(default_factory=dict)
    neutralised: dict[int, list[str]] = field(default_factory=dict)
    #: sets that left the union: their node disconnected, or they aged out
    forgotten: dict[int, str] = field(default_factory=dict)
    #: why server training stopped without a model (non-finite values), if it did
    training_stopped: str | None = None
    #: why the robust rule failed closed (no set aggregated), if it did
    robust_alarm: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """This round's record as JSON-ready values (the ``history`` entries of ``metrics.json``)."""
        return {
            "round": self.server_round,
            "sampled": self.sampled,
            "accepted": len(self.accepted),
            "dropped": {str(k): v for k, v in self.dropped.items()},
            "refused": {str(k): v for k, v in self.refused.items()},
            "clients": {str(k): v for k, v in self.clients.items()},
            "union_images": self.union_images,
            "trained": self.trained,
            "server_seconds": self.server_seconds,
            "rejected": {str(k): v for k, v in self.rejected.items()},
            "neutralised": {str(k): v for k, v in self.neutralised.items()},
            "forgotten": {str(k): v for k, v in self.forgotten.items()},
            "training_stopped": self.training_stopped,
            "robust_alarm": self.robust_alarm,
            **self.client_metrics,
        }


class FedCond(Strategy):
    """Federated condensation: aggregate synthetic sets, train the global model on them.

    Parameters
    ----------
    spec : DatasetSpec
        The dataset: image shape and class count every reply must match.
    config : FederatedConfig
        ``rounds`` (1 = one-shot), ``fraction_train``, ``min_reply_fraction``, the server
        recipe (``model``, ``server_epochs``, ``server_lr``) and ``distill.ipc`` (the size cap).
    device : torch.device | str
        Where the server trains the global model.
    min_available_nodes : int
        Wait for this many connected nodes before sampling.
    uploads : UploadStore | None
        Keeps every received synthetic set on disk (``OUT/uploads``).
    training_checkpoints : Path | None
        A folder where each round's server training keeps its state every 10 epochs
        (``server-training-round-R.pt``); a resumed round continues it when its union is the
        same, and trains afresh otherwise.
    reference : ServerReference | None
        The server's own labelled images the outlier rule judges client classes against
        (required when ``robust.reference_per_class`` > 0; :func:`server_reference`).

    Examples
    --------
    >>> strategy = FedCond(spec=get_spec("digits"), config=FederatedConfig())  # doctest: +SKIP
    >>> result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=1,
    ...                         train_config=ConfigRecord(job_to_mapping(job)))  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        spec: DatasetSpec,
        config: FederatedConfig,
        device: torch.device | str = "cpu",
        min_available_nodes: int = 1,
        uploads: UploadStore | None = None,
        training_checkpoints: Path | None = None,
        reference: ServerReference | None = None,
    ) -> None:
        if not 0 < config.fraction_train <= 1:
            raise ValueError(f"fraction_train must be in (0, 1], got {config.fraction_train}")
        if not 0 <= config.min_reply_fraction <= 1:
            raise ValueError(f"min_reply_fraction must be in [0, 1], got {config.min_reply_fraction}")
        if config.robust.reference_per_class > 0 and reference is None:
            raise ValueError("robust.reference_per_class > 0 needs the server's reference images (reference=...)")
        #: the server's own labelled images, the outlier rule's reference (``robust.reference_per_class``)
        self.reference = reference
        self.spec = spec
        self.config = config
        self.device = device
        self.min_available_nodes = min_available_nodes
        self.max_images = config.distill.ipc * spec.num_classes
        margin = config.robust.pixel_margin
        if margin is None:
            margin = PIXEL_MARGINS.get(config.distill.matching, DEFAULT_PIXEL_MARGIN)
        self.bounds = pixel_bounds(spec, margin=margin)
        self.client_sets: dict[int, ClientSet] = {}
        #: round in which each node's set in ``client_sets`` was accepted
        self.set_round: dict[int, int] = {}
        self.rounds: list[RoundReport] = []
        self.union: AggregatedSet | None = None
        #: latest cumulative epsilon each node reported, from every reply that carried one
        #: (accepted or dropped: a dropped set was still released and spent budget)
        self.node_epsilon: dict[int, float] = {}
        #: keeps every received synthetic set on disk (``OUT/uploads``), when given
        self.uploads = uploads
        #: where each round's server training keeps its state (a killed round continues it)
        self.training_checkpoints = training_checkpoints

    # ------------------------------------------------------------------ Strategy steps
    def summary(self) -> None:
        """Log the strategy's settings once, before the first round."""
        cfg = self.config
        mode = "one-shot" if cfg.rounds == 1 else f"multi-round ({cfg.rounds})"
        logger.info(
            "FedCond %s: ipc=%d iterations=%d, cap %d images/client, server %s x %d epochs, min reply fraction %.2f",
            mode,
            cfg.distill.ipc,
            cfg.distill.iterations,
            self.max_images,
            cfg.model,
            cfg.server_epochs,
            cfg.min_reply_fraction,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        node_ids = wait_for_nodes(grid, minimum=self.min_available_nodes, timeout=self.config.node_wait_timeout)
        departed = self._forget_departed(node_ids)
        # as Flower's FedAvg samples (int, not round), so the baselines see the same participation
        sample_size = max(1, int(len(node_ids) * self.config.fraction_train))
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + server_round)
        chosen = sorted(node_ids[i] for i in torch.randperm(len(node_ids), generator=generator)[:sample_size].tolist())
        train_config = ConfigRecord(dict(config))
        train_config[SERVER_ROUND] = server_round
        content = RecordDict({CONFIG_KEY: train_config})
        if server_round > 1 and len(arrays) > 0 and self.config.server_embedder:
            content[MODEL_KEY] = arrays  # the global model becomes DM's embedder, where clients accept it
        self.rounds.append(RoundReport(server_round, sampled=len(chosen), forgotten=departed))
        logger.info("round %d: sampled %d of %d nodes", server_round, len(chosen), len(node_ids))
        return [
            Message(content=content, message_type=f"train.{CONDENSE_ACTION}", dst_node_id=node_id)
            for node_id in chosen
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        report = self._report(server_round)
        for reply in replies:
            node_id = int(reply.metadata.src_node_id)
            self._record_epsilon(node_id, reply)
            report.clients[node_id] = client_report(reply)
            if self.uploads is not None:
                self.uploads.keep(reply, server_round=server_round)
            if reply.has_error() and reply.error.code == POLICY_REFUSED:
                reason = client_text(reply.error.reason)
                report.refused[node_id] = reason
                logger.warning("round %d: node %d refused by its policy: %s", server_round, node_id, reason)
                continue
            try:
                accepted = validate_reply(
                    reply,
                    num_classes=self.spec.num_classes,
                    image_shape=self.spec.image_shape,
                    max_images=self.max_images,
                    factor=self.config.distill.factor,
                    bounds=self.bounds,
                    ipc=self.config.distill.ipc,
                    max_class_count=self.config.robust.max_class_count,
                )
            except ReplyRejected as exc:
                report.dropped[node_id] = str(exc)
                logger.warning("round %d: dropped reply of node %d: %s", server_round, node_id, exc)
                continue
            self.client_sets[node_id] = accepted
            self.set_round[node_id] = server_round
            report.accepted.append(node_id)
        missing = report.sampled - len(report.accepted) - len(report.dropped) - len(report.refused)
        if missing > 0:
            logger.warning("round %d: %d sampled node(s) did not reply in time", server_round, missing)
        report.client_metrics = self._mean_client_metrics(report.accepted)
        needed = self.config.min_reply_fraction * report.sampled
        if len(report.accepted) < needed or not self.client_sets:
            logger.error(
                "round %d: only %d of %d sampled clients replied validly (need %.1f); the global model is kept",
                server_round,
                len(report.accepted),
                report.sampled,
                needed,
            )
            return None, self._metrics(report)
        start = time.perf_counter()
        sets = self._robust_union(server_round, report)
        if not sets:
            logger.error(
                "round %d: no client set left in the union%s; the global model is kept",
                server_round,
                " (the robust rule failed closed)" if report.robust_alarm else "",
            )
            return None, self._metrics(report)
        union = aggregate_sets(sets, num_classes=self.spec.num_classes)
        checkpoint = None
        if self.training_checkpoints is not None:
            checkpoint = self.training_checkpoints / f"server-training-round-{server_round}.pt"
        try:
            model = self._train(union, server_round, checkpoint)
        except NonFiniteTraining as exc:
            report.training_stopped = str(exc)
            logger.error("round %d: server training stopped: %s; the global model is kept", server_round, exc)
            return None, self._metrics(report)
        self.union = union
        report.union_images = len(self.union)
        report.trained = True
        report.server_seconds = time.perf_counter() - start
        logger.info(
            "round %d: global model trained on %d synthetic images from %d clients in %.1fs",
            server_round,
            len(self.union),
            len(self.union.node_ids),
            report.server_seconds,
        )
        return model_to_record(model), self._metrics(report)

    def _train(self, union: AggregatedSet, server_round: int, checkpoint: Path | None) -> nn.Module:
        """The round's global model trained on ``union``, continuing ``checkpoint`` when it holds
        this training (a resumed round); a checkpoint of another union is replaced."""

        def train() -> nn.Module:
            generator = torch.Generator().manual_seed(self.config.seed * 1000 + 500 + server_round)
            return train_global_model(
                union,
                spec=self.spec,
                model_name=self.config.model,
                epochs=self.config.server_epochs,
                lr=self.config.server_lr,
                generator=generator,
                device=self.device,
                checkpoint=checkpoint,
            )

        try:
            return train()
        except TrainingCheckpointMismatch as exc:  # the resumed round's clients sent other sets
            logger.warning("round %d: %s; training afresh", server_round, exc)
            assert checkpoint is not None
            checkpoint.unlink()
            return train()

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # the server evaluates on its real test set (start's evaluate_fn)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    # ------------------------------------------------------------------ the union's membership
    def _forget_departed(self, connected: list[int]) -> dict[int, str]:
        """Remove the sets of nodes no longer connected (a reconnecting node gets a new id)."""
        gone = sorted(set(self.client_sets) - set(connected))
        for node_id in gone:
            del self.client_sets[node_id]
            self.set_round.pop(node_id, None)
            logger.warning("node %d disconnected: its synthetic set leaves the union", node_id)
        return {node_id: "node disconnected" for node_id in gone}

    def _age_out(self, server_round: int) -> dict[int, str]:
        """Remove sets not refreshed within ``robust.max_set_age`` rounds."""
        max_age = self.config.robust.max_set_age
        stale = sorted(n for n, r in self.set_round.items() if server_round - r >= max_age and n in self.client_sets)
        for node_id in stale:
            del self.client_sets[node_id]
            del self.set_round[node_id]
            logger.warning(
                "round %d: the set of node %d is older than %d rounds: aged out", server_round, node_id, max_age
            )
        return {node_id: f"older than {max_age} rounds" for node_id in stale}

    def _robust_union(self, server_round: int, report: RoundReport) -> list[ClientSet]:
        """The sets to aggregate this round: fresh enough, through the robust rule."""
        report.forgotten.update(self._age_out(server_round))
        outcome = robust_sets(
            list(self.client_sets.values()),
            spec=self.spec,
            config=self.config.robust,
            model_name=self.config.model,
            seed=self.config.seed * 1000 + 700 + server_round,
            ipc=self.config.distill.ipc,
            reference=self.reference,
        )
        report.rejected = dict(outcome.rejected)
        report.neutralised = dict(outcome.neutralised)
        report.robust_alarm = outcome.alarm
        if outcome.alarm is not None:
            # the sets contradict each other and none is known to be the honest side: every set
            # leaves the union, so the next round judges fresh sets instead of the same contradiction
            for node_id in list(self.client_sets):
                report.forgotten[node_id] = "the robust rule failed closed"
            self.client_sets.clear()
            self.set_round.clear()
        for node_id, reason in outcome.rejected.items():
            logger.warning("round %d: the robust rule rejected the set of node %d: %s", server_round, node_id, reason)
            if node_id in report.accepted:  # this round's reply: counted as dropped, with the reason
                report.accepted.remove(node_id)
                report.dropped[node_id] = f"robust rule: {reason}"
        for node_id, notes in outcome.neutralised.items():
            logger.warning("round %d: node %d's set neutralised: %s", server_round, node_id, "; ".join(notes))
        return outcome.sets

    # ------------------------------------------------------------------ helpers
    def _report(self, server_round: int) -> RoundReport:
        if self.rounds and self.rounds[-1].server_round == server_round:
            return self.rounds[-1]
        report = RoundReport(server_round)
        self.rounds.append(report)
        return report

    @property
    def federation_epsilon(self) -> float | None:
        """The federation's epsilon: the largest cumulative epsilon any node reported, any round.

        Clients hold disjoint data, so by parallel composition the federation's guarantee is its
        worst client's; nodes not sampled in the last round and dropped replies count too.
        ``None`` when no reply carried an epsilon (no DP).
        """
        return max(self.node_epsilon.values()) if self.node_epsilon else None

    def _record_epsilon(self, node_id: int, reply: Message) -> None:
        if reply.has_error() or METRICS_KEY not in reply.content.metric_records:
            return
        value = reply.content.metric_records[METRICS_KEY].get(EPSILON)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            return
        self.node_epsilon[node_id] = max(float(value), self.node_epsilon.get(node_id, 0.0))

    def _mean_client_metrics(self, node_ids: list[int]) -> dict[str, float]:
        sums: dict[str, float] = {}
        reported: dict[str, int] = {}
        epsilons: list[float] = []
        for node_id in node_ids:
            for key, value in self.client_sets[node_id].metrics.items():
                if key != "class-counts":
                    sums[key] = sums.get(key, 0.0) + float(value)
                    reported[key] = reported.get(key, 0) + 1
                if key == EPSILON:
                    epsilons.append(float(value))
        # each mean over the replies that report the metric (validation keeps finite values only)
        out = {f"client-mean-{k}": v / reported[k] for k, v in sums.items()}
        if epsilons:
            # clients hold disjoint data (parallel composition): the federation's guarantee is the
            # largest cumulative epsilon any client reports
            out["client-max-epsilon"] = max(epsilons)
        return out

    @staticmethod
    def _metrics(report: RoundReport) -> MetricRecord:
        return MetricRecord(
            {
                "accepted": len(report.accepted),
                "dropped": len(report.dropped),
                "refused": len(report.refused),
                "union-images": report.union_images,
                **{k: float(v) for k, v in report.client_metrics.items()},
            }
        )
