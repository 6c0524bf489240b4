"""``fedcond simulate`` keeps Flower's "DEPRECATED FEATURE: run_simulation" notice off the terminal.

Flower's engine (``_run_simulation``, which starts Ray) is replaced by a stub, so the real
``flwr.simulation.run_simulation`` wrapper runs, with its real notice, in well under a second.
"""

from __future__ import annotations

import importlib
import logging

import pytest
from flwr.simulation import run_simulation

from fedcond.federated import job_from_mapping
from fedcond.federated.flower_logging import without_run_simulation_notice
from fedcond.federated.simulation import SimulationError, simulate


class _Records(logging.Handler):
    """Every record that gets past Flower's logger (and its filters) to a handler."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def flower_records():
    flower = logging.getLogger("flwr")
    handler = _Records()
    flower.addHandler(handler)
    yield handler
    flower.removeHandler(handler)


@pytest.fixture
def engine_calls(monkeypatch):
    """Stub Flower's simulation engine; record the apps it was handed."""
    calls: list[dict] = []
    engine = importlib.import_module("flwr.simulation.run_simulation")
    monkeypatch.setattr(engine, "_run_simulation", lambda **kwargs: calls.append(kwargs))
    return calls


def _notices(messages: list[str]) -> list[str]:
    return [m for m in messages if "DEPRECATED FEATURE" in m and "run_simulation" in m]


def test_flower_logs_the_notice_when_run_simulation_is_called_directly(flower_records, engine_calls):
    # the control: Flower 1.42 does log it (if Flower drops or rewords it, this test says so)
    run_simulation(server_app=None, client_app=None, num_supernodes=1)
    assert len(engine_calls) == 1
    assert len(_notices(flower_records.messages)) == 1


def test_the_simulate_path_logs_no_deprecation_notice(flower_records, engine_calls):
    job = job_from_mapping({"dataset": "digits", "num-clients": 2, "distill.iterations": 1})
    filters_before = list(logging.getLogger("flwr").filters)

    with pytest.raises(SimulationError, match="without a report"):  # the stub ran no ServerApp
        simulate(job, engine="ray")

    assert len(engine_calls) == 1 and engine_calls[0]["num_supernodes"] == 2
    assert _notices(flower_records.messages) == []
    assert logging.getLogger("flwr").filters == filters_before  # the filter is gone afterwards


def test_only_the_run_simulation_notice_is_dropped(flower_records):
    flower = logging.getLogger("flwr")
    with without_run_simulation_notice():
        flower.warning("DEPRECATED FEATURE: %s", "The `run_simulation` function is deprecated and will go")
        flower.warning("DEPRECATED FEATURE: %s", "The `start_client` function is deprecated")
        flower.warning("SuperNode authentication is disabled.")
    flower.warning("DEPRECATED FEATURE: %s", "The `run_simulation` function is deprecated and will go")

    assert flower_records.messages == [
        "DEPRECATED FEATURE: The `start_client` function is deprecated",
        "SuperNode authentication is disabled.",
        "DEPRECATED FEATURE: The `run_simulation` function is deprecated and will go",  # outside the block
    ]
