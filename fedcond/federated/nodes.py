"""Waiting for the federation's nodes, with a deadline.

Flower's strategies poll ``grid.get_node_ids()`` until ``min_available_nodes`` are connected and
would wait for ever when they never come; :func:`wait_for_nodes` gives up after ``timeout``
seconds with an error that says how many nodes did connect.
"""

from __future__ import annotations

import logging
import time

from flwr.serverapp import Grid

__all__ = ["NodeWaitTimeout", "wait_for_nodes"]

logger = logging.getLogger(__name__)


class NodeWaitTimeout(TimeoutError):
    """Fewer than the required nodes connected before the deadline."""


def wait_for_nodes(grid: Grid, *, minimum: int, timeout: float, poll: float = 1.0) -> list[int]:
    """The connected node ids (sorted) once at least ``minimum`` are connected.

    Raises
    ------
    NodeWaitTimeout
        When ``timeout`` seconds pass with fewer than ``minimum`` nodes connected.
    """
    deadline = time.monotonic() + max(0.0, timeout)
    node_ids = sorted(grid.get_node_ids())
    while len(node_ids) < minimum:
        if time.monotonic() >= deadline:
            raise NodeWaitTimeout(
                f"only {len(node_ids)} of the required {minimum} nodes connected within {timeout:g}s "
                "(config keys min-available-nodes, node-wait-timeout)"
            )
        logger.info("waiting for %d nodes (%d connected)", minimum, len(node_ids))
        time.sleep(poll)
        node_ids = sorted(grid.get_node_ids())
    return node_ids
