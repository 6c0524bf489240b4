"""Communication accounting: a ``Grid`` that counts the payload bytes of every message.

:class:`CountingGrid` wraps the real Grid (simulation or deployment) and forwards every call;
on the way it adds up :func:`~fedcond.federated.records.payload_bytes` of each message sent
(downlink) and each reply received (uplink), per round. The round is read from the
``server-round`` entry that Flower's strategies (and FedCond) put in the train/evaluate
config; messages without one count towards round 0. Any strategy, Flower's own included,
is therefore measured the same way.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedcond.federated.records import CONFIG_KEY, POLICY_REFUSED, SERVER_ROUND, payload_bytes
from fedcond.federated.untrusted import client_text

__all__ = ["CountingGrid", "RoundTraffic"]


@dataclass
class RoundTraffic:
    """Bytes and message counts of one round, each direction."""

    downlink_bytes: int = 0
    uplink_bytes: int = 0
    messages_sent: int = 0
    replies_received: int = 0
    #: error replies per node: declined by the client's policy (``POLICY_REFUSED``), or other errors;
    #: the reasons are the clients' text, bounded to one line (:func:`~fedcond.federated.untrusted.client_text`)
    refused: dict[int, str] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)


def _round_of(content: RecordDict) -> int:
    configs = content.config_records
    if CONFIG_KEY in configs and SERVER_ROUND in configs[CONFIG_KEY]:
        return int(configs[CONFIG_KEY][SERVER_ROUND])  # type: ignore[arg-type]
    return 0


@dataclass
class _Ledger:
    rounds: dict[int, RoundTraffic] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)  # message id -> round

    def entry(self, server_round: int) -> RoundTraffic:
        """The traffic record of ``server_round``, created on first use."""
        return self.rounds.setdefault(server_round, RoundTraffic())


class CountingGrid(Grid):
    """A :class:`flwr.serverapp.Grid` decorator that records traffic per round.

    Parameters
    ----------
    grid : Grid
        The Grid the ServerApp received.
    """

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self._ledger = _Ledger()
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- accounting view
    @property
    def traffic(self) -> dict[int, RoundTraffic]:
        """Traffic per round (a copy)."""
        with self._lock:
            return {k: copy.deepcopy(v) for k, v in sorted(self._ledger.rounds.items())}

    @property
    def uplink_bytes(self) -> int:
        """Bytes sent from clients to the server over all rounds."""
        return sum(t.uplink_bytes for t in self.traffic.values())

    @property
    def downlink_bytes(self) -> int:
        """Bytes sent from the server to clients over all rounds."""
        return sum(t.downlink_bytes for t in self.traffic.values())

    def _count_sent(self, messages: list[Message]) -> list[int]:
        rounds = []
        with self._lock:
            for message in messages:
                server_round = _round_of(message.content)
                entry = self._ledger.entry(server_round)
                entry.downlink_bytes += payload_bytes(message.content)
                entry.messages_sent += 1
                rounds.append(server_round)
        return rounds

    def _count_received(self, replies: list[Message], server_round: int | None) -> None:
        with self._lock:
            for reply in replies:
                r = server_round
                if r is None:
                    r = self._ledger.pending.pop(reply.metadata.reply_to_message_id, 0)
                entry = self._ledger.entry(r)
                entry.replies_received += 1
                if not reply.has_error():
                    entry.uplink_bytes += payload_bytes(reply.content)
                elif reply.error.code == POLICY_REFUSED:
                    entry.refused[int(reply.metadata.src_node_id)] = client_text(reply.error.reason)
                else:
                    entry.errors[int(reply.metadata.src_node_id)] = client_text(reply.error.reason)

    # ---------------------------------------------------------------- Grid interface
    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(  # noqa: PLR0913 - Grid's signature
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        rounds = self._count_sent(messages)
        ids = list(self._grid.push_messages(messages))
        with self._lock:
            self._ledger.pending.update(zip(ids, rounds, strict=False))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self._grid.pull_messages(message_ids))
        self._count_received(replies, None)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        rounds = self._count_sent(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._count_received(replies, max(rounds) if rounds else 0)
        return replies
