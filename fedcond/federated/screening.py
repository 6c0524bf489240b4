"""Reply screening for Flower's weight-averaging strategies: a malformed reply is dropped, not fatal.

Flower's FedAvg, and FedProx, FedMedian, FedTrimmedAvg, Krum, MultiKrum and Bulyan built on it,
require every reply of a round to share one structure and raise ``InconsistentMessageReplies``
otherwise, which ``Strategy.start`` does not catch: one client that sends an extra metric ends
the run. They also divide by the sum of the clients' ``num-examples``, so a NaN, infinite, zero
or negative claim breaks the average or takes it over. :class:`ReplyScreen` wraps such a
strategy, as Flower's DP wrappers do, and hands it only the replies that have the structure the
server expects, dropping every other one with a logged reason:

- records: one ``ArrayRecord`` under the strategy's ``arrayrecord_key`` (train replies only)
  and one ``MetricRecord`` under :data:`~fedcond.federated.records.METRICS_KEY`, nothing else;
- arrays: the names (in order), shapes and dtypes of the global model the round sent, in bytes
  that hold exactly that (:func:`~fedcond.federated.untrusted.check_array_payload`, before
  anything is decoded); a round whose model the screen did not see (``aggregate_train``
  called on its own) expects the structure most replies share;
- metrics: exactly the expected names, each a finite number, the weight (``num-examples``)
  greater than 0 and at most :data:`MAX_WEIGHT`.

Error replies are logged here, their reason bounded to one line
(:func:`~fedcond.federated.untrusted.client_text`), and not handed on: the Grid's ledger
(:class:`~fedcond.federated.accounting.CountingGrid`) counts them. The train replies dropped
here are kept per round in :attr:`ReplyScreen.dropped`, which the ServerApp reports in
``history[].dropped`` beside the error replies, as FedCond reports its own dropped replies.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Collection, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from fedcond.federated.records import LOCAL_ACCURACY, METRICS_KEY, NUM_EXAMPLES, POLICY_REFUSED
from fedcond.federated.untrusted import ArrayPayloadError, check_array_payload, client_text, finite_number

__all__ = ["MAX_WEIGHT", "ReplyScreen"]

logger = logging.getLogger(__name__)

#: largest weight (``num-examples``) a reply may claim: integers up to 2^53 are exact in float64,
#: and the sum of any realistic number of them stays finite
MAX_WEIGHT = 2**53

#: an ArrayRecord's structure: (name, shape, dtype) of each array, in order
Structure = tuple[tuple[str, tuple[int, ...], str], ...]


def _structure(record: ArrayRecord) -> Structure:
    return tuple((name, tuple(array.shape), str(array.dtype)) for name, array in record.items())


def _structure_difference(found: Structure, expected: Structure) -> str:
    """Why ``found`` is not ``expected``, in one line."""
    names = [name for name, _, _ in found]
    if names != [name for name, _, _ in expected]:
        return f"its arrays {client_text(names)} are not the global model's {len(expected)} arrays"
    for (name, shape, dtype), (_, found_shape, found_dtype) in zip(expected, found, strict=True):
        if (found_shape, found_dtype) != (shape, dtype):
            return (
                f"array {name!r} declares {client_text(found_shape)} of {client_text(found_dtype)}, "
                f"the global model's {shape} of {dtype}"
            )
    return "its arrays differ from the global model's"


class ReplyScreen(Strategy):
    """Forward to ``inner``, handing it only the replies that have the expected structure.

    Parameters
    ----------
    inner : FedAvg
        Flower's strategy (FedAvg or one built on it): its ``arrayrecord_key`` names the replies'
        ArrayRecord and its ``weighted_by_key`` the weight metric.
    train_metrics : Collection[str]
        The metric names of a train reply (the ClientApp's ``train`` handler sends
        ``num-examples``).
    evaluate_metrics : Collection[str]
        The metric names of an evaluate reply.

    Attributes
    ----------
    dropped : dict[int, dict[int, str]]
        Train replies dropped here: round -> node -> reason.

    Raises
    ------
    ValueError
        When the weight metric is not among ``train_metrics`` or ``evaluate_metrics``.
    """

    def __init__(
        self,
        inner: FedAvg,
        *,
        train_metrics: Collection[str] = (NUM_EXAMPLES,),
        evaluate_metrics: Collection[str] = (NUM_EXAMPLES, LOCAL_ACCURACY),
    ) -> None:
        for names in (train_metrics, evaluate_metrics):
            if inner.weighted_by_key not in names:
                raise ValueError(f"the weight metric {inner.weighted_by_key!r} is not among {sorted(names)}")
        self.inner = inner
        self.train_metrics = frozenset(train_metrics)
        self.evaluate_metrics = frozenset(evaluate_metrics)
        self.dropped: dict[int, dict[int, str]] = {}
        #: the round and the structure of the global model sent in it
        self._sent: tuple[int, Structure] | None = None

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._sent = (server_round, _structure(arrays))
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if self._sent is not None and self._sent[0] == server_round:
            expected = self._sent[1]
        else:
            expected = self._majority_structure(replies)
        kept, dropped = self._screen(server_round, replies, arrays=expected, metrics=self.train_metrics)
        self.dropped.setdefault(server_round, {}).update(dropped)
        if not kept:
            logger.warning("round %d: no reply to aggregate; the global model is kept", server_round)
            return None, None
        return self.inner.aggregate_train(server_round, kept)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        kept, _ = self._screen(server_round, list(replies), arrays=None, metrics=self.evaluate_metrics)
        return self.inner.aggregate_evaluate(server_round, kept) if kept else None

    # ------------------------------------------------------------------ the checks
    def _majority_structure(self, replies: list[Message]) -> Structure | None:
        """The ArrayRecord structure most replies share (the first seen among equals)."""
        key = self.inner.arrayrecord_key
        counts = Counter(
            _structure(reply.content.array_records[key])
            for reply in replies
            if not reply.has_error() and key in reply.content.array_records
        )
        return counts.most_common(1)[0][0] if counts else None

    def _screen(
        self, server_round: int, replies: list[Message], *, arrays: Structure | None, metrics: frozenset[str]
    ) -> tuple[list[Message], dict[int, str]]:
        """The replies to hand on, and node -> reason for the ones dropped (error replies are neither)."""
        kept: list[Message] = []
        dropped: dict[int, str] = {}
        for reply in replies:
            node_id = int(reply.metadata.src_node_id)
            if reply.has_error():
                what = "refused by its policy" if reply.error.code == POLICY_REFUSED else "replied with an error"
                logger.warning("round %d: node %d %s: %s", server_round, node_id, what, client_text(reply.error.reason))
                continue
            reason = self._problem(reply, arrays=arrays, metrics=metrics)
            if reason is None:
                kept.append(reply)
            else:
                dropped[node_id] = reason
                logger.warning("round %d: dropped reply of node %d: %s", server_round, node_id, reason)
        return kept, dropped

    def _problem(self, reply: Message, *, arrays: Structure | None, metrics: frozenset[str]) -> str | None:
        """Why ``reply`` cannot be aggregated, or ``None``; ``arrays`` is ``None`` for an evaluate reply."""
        content = reply.content
        key = self.inner.arrayrecord_key
        found = {
            "ArrayRecord": list(content.array_records),
            "MetricRecord": list(content.metric_records),
            "ConfigRecord": list(content.config_records),
        }
        wanted = {"ArrayRecord": [] if arrays is None else [key], "MetricRecord": [METRICS_KEY], "ConfigRecord": []}
        if found != wanted or len(content) != sum(len(names) for names in found.values()):
            return f"its records {client_text(found)} are not the expected {wanted}"
        if arrays is not None:
            record = content.array_records[key]
            structure = _structure(record)
            if structure != arrays:
                return _structure_difference(structure, arrays)
            for (name, shape, _), array in zip(arrays, record.values(), strict=True):
                try:
                    check_array_payload(array, max_elements=math.prod(shape))
                except ArrayPayloadError as exc:
                    return f"array {name!r} refused before decoding: {exc}"
        values = content.metric_records[METRICS_KEY]
        if set(values) != metrics:
            return f"its metrics {client_text(sorted(values))} are not the expected {sorted(metrics)}"
        for name in sorted(metrics):
            if not finite_number(values[name]):
                return f"metric {name!r} ({client_text(values[name], limit=40)}) is not a finite number"
        weight = values[self.inner.weighted_by_key]
        if not 0 < weight <= MAX_WEIGHT:
            return f"metric {self.inner.weighted_by_key!r} ({weight}) is not in (0, {MAX_WEIGHT}]"
        return None
