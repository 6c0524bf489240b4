"""A sequential, in-process Grid: the same ServerApp and ClientApp code without Ray.

:class:`InProcessGrid` implements :class:`flwr.serverapp.Grid` by calling the ClientApp
directly for every message, one node after the other, each node keeping its own
:class:`flwr.app.Context` (so ``Context.state`` persists across rounds as on a SuperNode).
A ClientApp exception becomes an error reply, as the real runtimes do. The strategy, the
messages and therefore the byte accounting are exactly those of the other engines; only the
transport differs. It serves the fast end-to-end tests and the CPU benchmark (Ray's actors
run at low priority and add start-up time that would dominate small runs).
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterable, Iterator
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedcond.federated.records import NUM_PARTITIONS, PARTITION_ID

__all__ = ["InProcessGrid", "task_identity"]

_CLIENT_ERROR = 1  # an exception in the ClientApp


@contextlib.contextmanager
def task_identity(run_id: int = 1) -> Iterator[None]:
    """Give this process the run identity that Flower's runtimes normally set."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)  # noqa: SLF001
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved  # noqa: SLF001


class InProcessGrid(Grid):
    """Run ``client_app`` for ``num_nodes`` virtual nodes inside this process.

    Parameters
    ----------
    client_app : ClientApp
        The app every node runs.
    num_nodes : int
        Node ``i`` gets ``node_config = {"partition-id": i, "num-partitions": num_nodes}``.
    run_id : int
        The run id stamped on messages.
    """

    def __init__(self, client_app: ClientApp, *, num_nodes: int, run_id: int = 1) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        self._app = client_app
        self._run_id = run_id
        self._contexts = {
            1000 + i: Context(
                run_id=run_id,
                node_id=1000 + i,
                node_config={PARTITION_ID: i, NUM_PARTITIONS: num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for i in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}
        self._run: Run | None = None

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run | None:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def _execute(self, message: Message) -> Message:
        context = self._contexts.get(message.metadata.dst_node_id)
        if context is None:
            return Message(Error(code=_CLIENT_ERROR, reason="unknown destination node"), reply_to=message)
        try:
            reply = self._app(message, context)
        except Exception as exc:  # noqa: BLE001 - reported to the server as an error reply
            reason = f"{type(exc).__name__}: {exc}"
            last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
            if last:
                reason += f" ({last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})"
            return Message(Error(code=_CLIENT_ERROR, reason=reason), reply_to=message)
        return reply

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            self._replies[message.metadata.message_id] = self._execute(message)
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        # sequential execution: every reply is ready once push returns (no timeout applies)
        return list(self.pull_messages(list(self.push_messages(messages))))
