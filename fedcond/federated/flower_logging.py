"""Keep Flower's deprecation notice for ``run_simulation`` off the terminal of ``fedcond simulate``.

Flower 1.42 logs "DEPRECATED FEATURE: The `run_simulation` function is deprecated ... Please
use `flwr run`" on every call of :func:`flwr.simulation.run_simulation`. ``fedcond simulate``
calls it on purpose: 1.42 has no other way to run the Simulation Engine from Python. ``flwr
run`` (the supported entry point) submits the app to a SuperLink, which runs the ServerApp
and the ClientApps in processes of their own, loaded by module name from the app bundle; it
cannot run a ServerApp built in this process around a typed job, nor hand its report back as an
object, and that is what ``fedcond simulate`` and the benchmarks need. ``flwr run .`` still
works for users who want Flower's own entry point (docs/federated.md). The notice is addressed
to whoever calls ``run_simulation``, that is fedcond, not the user, so it is dropped here, and
only that record: every other Flower message, warnings included, still reaches the terminal.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["without_run_simulation_notice"]

FLOWER_LOGGER_NAME = "flwr"
_DEPRECATED = "DEPRECATED FEATURE"
_RUN_SIMULATION = "`run_simulation` function is deprecated"


class _DropRunSimulationNotice(logging.Filter):
    """Drop Flower's "DEPRECATED FEATURE" record about ``run_simulation``; keep every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith(_DEPRECATED) and _RUN_SIMULATION in message)


@contextmanager
def without_run_simulation_notice() -> Iterator[None]:
    """Within the block, Flower's logger drops its deprecation notice for ``run_simulation``.

    The filter sits on Flower's own logger (Flower logs through it directly), so it acts before
    any handler, Flower's console handler included, and it is removed when the block ends.
    """
    flower_logger = logging.getLogger(FLOWER_LOGGER_NAME)
    notice_filter = _DropRunSimulationNotice()
    flower_logger.addFilter(notice_filter)
    try:
        yield
    finally:
        flower_logger.removeFilter(notice_filter)
