"""PrivacyLedger: one node's lifetime DP spending, shared safely by overlapping runs."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from fedcond.privacy.accounting import PrivacyAccountant
from fedcond.privacy.ledger import LedgerError, PrivacyLedger, check_ledger_writable

RUN = {"noise_multiplier": 1.2, "sample_rate": 0.1, "steps": 200}
DELTA = 1e-5
SOURCE = "S" * 64


def _check(ledger: PrivacyLedger, budget: float | None, **options) -> float:
    return ledger.check(**RUN, mechanism="rdp", budget_epsilon=budget, budget_delta=DELTA, **options)


def _record(ledger: PrivacyLedger, steps: int = RUN["steps"]) -> float:
    return ledger.record(**{**RUN, "steps": steps}, delta=DELTA)


def _spend(runs: int) -> float:
    """Epsilon of ``runs`` runs of :data:`RUN`, composed."""
    accountant = PrivacyAccountant("rdp")
    for _ in range(runs):
        accountant.step(**RUN)
    return accountant.epsilon(delta=DELTA)


ONE, TWO = _spend(1), _spend(2)  # about 7.9 and 11.5: a budget of 10 fits one run, 20 fits two


def test_interleaved_runs_that_fit_the_budget_are_both_recorded(tmp_path) -> None:
    # Prepare: two runs open one ledger file at their start, as two runs on one SuperNode do
    path = tmp_path / "ledger.json"
    a, b = PrivacyLedger(path, source=SOURCE), PrivacyLedger(path, source=SOURCE)

    # Execute: both check, then both record
    assert _check(a, 20.0) == pytest.approx(ONE)
    assert _check(b, 20.0) == pytest.approx(TWO)  # A's run in flight is counted
    _record(a)
    lifetime = _record(b)

    # Assert: neither record wrote over the other
    on_disk = PrivacyLedger(path, source=SOURCE)
    assert len(on_disk.runs) == 2 and on_disk.reserved == []
    assert on_disk.spent(delta=DELTA) == pytest.approx(TWO) == pytest.approx(lifetime)


def test_the_second_of_two_interleaved_runs_is_refused_when_only_one_fits(tmp_path) -> None:
    path = tmp_path / "ledger.json"
    a, b = PrivacyLedger(path, source=SOURCE), PrivacyLedger(path, source=SOURCE)
    _check(a, 10.0)
    with pytest.raises(LedgerError, match=r"budget is exhausted: spent epsilon 0\.0000 .* 1 run\(s\) in flight"):
        _check(b, 10.0)
    _record(a)
    on_disk = PrivacyLedger(path, source=SOURCE)
    assert len(on_disk.runs) == 1 and on_disk.reserved == []
    assert on_disk.spent(delta=DELTA) == pytest.approx(ONE)
    with pytest.raises(LedgerError, match="budget is exhausted"):  # and once A is recorded
        _check(b, 10.0)


def test_a_record_settles_its_reservation_with_the_steps_the_run_made(tmp_path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.json", source=SOURCE)
    _check(ledger, 10.0)
    reserved = json.loads(ledger.path.read_text())["reserved"]
    assert [(r["steps"], r["noise_multiplier"], r["sample_rate"]) for r in reserved] == [(200, 1.2, 0.1)]
    _record(ledger, steps=50)  # a run stopped early by its time budget
    state = json.loads(ledger.path.read_text())
    assert state["reserved"] == [] and state["history"] == [[1.2, 0.1, 50]] and state["version"] == 2


def test_a_cancelled_reservation_frees_its_budget(tmp_path) -> None:
    path = tmp_path / "ledger.json"
    a, b = PrivacyLedger(path, source=SOURCE), PrivacyLedger(path, source=SOURCE)
    _check(a, 10.0)
    a.cancel_reservation()
    a.cancel_reservation()  # nothing left to withdraw: a no-op
    assert _check(b, 10.0) == pytest.approx(ONE)
    assert len(PrivacyLedger(path, source=SOURCE).reserved) == 1  # B's


def test_a_check_without_reserve_writes_nothing(tmp_path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.json", source=SOURCE)
    _check(ledger, 10.0, reserve=False)
    assert not ledger.path.exists()
    _check(ledger, 10.0, reserve=True)  # the checks before reserved nothing
    with pytest.raises(LedgerError, match="in flight"):  # this one did
        _check(ledger, 10.0, reserve=False)


def test_the_reservation_of_a_run_that_died_stays_charged(tmp_path) -> None:
    path = tmp_path / "ledger.json"
    _check(PrivacyLedger(path, source=SOURCE), 10.0)  # its run never records: a killed process
    restarted = PrivacyLedger(path, source=SOURCE)
    assert len(restarted.reserved) == 1 and restarted.spent(delta=DELTA) == 0.0
    with pytest.raises(LedgerError, match="in flight"):
        _check(restarted, 10.0)


def test_version_1_files_are_read_and_an_unknown_version_is_refused(tmp_path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text(
        json.dumps(
            {
                "format": "fedcond-dp-ledger",
                "version": 1,
                "source": SOURCE,
                "mechanism": "rdp",
                "history": [[1.2, 0.1, 200]],
                "runs": [{"steps": 200, "epsilon_after": ONE, "delta": DELTA}],
            }
        )
    )
    ledger = PrivacyLedger(path, source=SOURCE)
    assert ledger.spent(delta=DELTA) == pytest.approx(ONE) and ledger.reserved == []
    assert _record(ledger) == pytest.approx(TWO)
    assert json.loads(path.read_text())["version"] == 2
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": 3}))
    with pytest.raises(LedgerError, match="version 3; this fedcond reads versions 1, 2"):
        PrivacyLedger(path, source=SOURCE)


def test_a_ledger_replaced_by_another_data_source_is_refused_at_the_next_check(tmp_path) -> None:
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, source=SOURCE)
    _record(PrivacyLedger(path, source="0" * 64))
    with pytest.raises(LedgerError, match="another data source"):
        _check(ledger, 10.0)
    with pytest.raises(LedgerError, match="another data source"):
        PrivacyLedger(path, source=SOURCE)


def test_a_corrupt_reservation_is_refused(tmp_path) -> None:
    path = tmp_path / "ledger.json"
    _check(PrivacyLedger(path, source=SOURCE), None)
    state = json.loads(path.read_text())
    state["reserved"][0]["sample_rate"] = 0.0
    path.write_text(json.dumps(state))
    with pytest.raises(LedgerError, match="out of range"):
        PrivacyLedger(path, source=SOURCE)


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("history", 199.9),  # a fractional step count would be truncated: fewer steps charged
        ("history", True),  # a boolean is not a step count
        ("history", "200"),  # nor is a string
        ("run", 199.5),
        ("run", None),
        ("reservation", float("inf")),  # an infinite noise multiplier would count as no spend
        ("reservation", float("nan")),
    ],
)
def test_a_ledger_row_that_is_not_a_whole_number_of_steps_is_refused(tmp_path, where, value) -> None:
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, source=SOURCE)
    _check(ledger, None)
    if where != "reservation":
        _record(ledger)
    state = json.loads(path.read_text())
    if where == "history":
        state["history"][0][2] = value
    elif where == "run":
        state["runs"][0]["steps"] = value
    else:
        state["reserved"][0]["noise_multiplier"] = value
    path.write_text(json.dumps(state))
    with pytest.raises(LedgerError, match="corrupt"):
        PrivacyLedger(path, source=SOURCE)


def test_a_run_entry_that_is_not_a_record_is_refused(tmp_path) -> None:
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, source=SOURCE)
    _check(ledger, None)
    _record(ledger)
    state = json.loads(path.read_text())
    state["runs"].append(42)
    path.write_text(json.dumps(state))
    with pytest.raises(LedgerError, match="corrupt"):
        PrivacyLedger(path, source=SOURCE)
    state["runs"][-1] = "x"
    path.write_text(json.dumps(state))
    with pytest.raises(LedgerError, match="corrupt"):
        PrivacyLedger(path, source=SOURCE)


# --------------------------------------------------------------------------- an unwritable folder
def test_a_ledger_under_a_regular_file_is_refused_by_name(tmp_path) -> None:
    (tmp_path / "afile").write_text("a file, not a folder")
    path = tmp_path / "afile" / "sub" / "l.json"
    with pytest.raises(LedgerError) as probed:
        check_ledger_writable(path)
    message = str(probed.value)
    assert str(path.parent) in message and f"{tmp_path / 'afile'} is a file, not a folder" in message
    assert "\n" not in message
    # a run meets the same error, at its first check and before anything is condensed
    with pytest.raises(LedgerError) as at_run:
        _check(PrivacyLedger(path, source=SOURCE), 10.0, reserve=False)
    assert str(at_run.value) == message
    with pytest.raises(LedgerError, match="is a file, not a folder"):
        _record(PrivacyLedger(path, source=SOURCE))


def test_the_writability_check_leaves_the_disk_as_it_found_it(tmp_path) -> None:
    check_ledger_writable(tmp_path / "state" / "ledgers" / "l.json")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "folder").mkdir()
    with pytest.raises(LedgerError, match="is a folder, not a file"):
        check_ledger_writable(tmp_path / "folder")
    with pytest.raises(LedgerError, match="is a folder, not a file"):
        PrivacyLedger(tmp_path / "folder", source=SOURCE)


# --------------------------------------------------------------------------- two processes
def _racing_run(path: str, budget: float, barrier, results) -> None:  # noqa: ANN001 - multiprocessing objects
    """One run: open the ledger, wait for the other run, check, condense (a sleep), record."""
    ledger = PrivacyLedger(Path(path), source=SOURCE)
    barrier.wait()
    try:
        _check(ledger, budget)
    except LedgerError:
        results.put("refused")
        return
    time.sleep(0.2)  # the other run checks while this one condenses
    _record(ledger)
    results.put("recorded")


def _race(path: Path, budget: float) -> list[str]:
    context = multiprocessing.get_context("fork")  # the test process's imports, no re-import
    barrier, results = context.Barrier(2), context.Queue()
    runs = [context.Process(target=_racing_run, args=(str(path), budget, barrier, results)) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=30)
    assert all(run.exitcode == 0 for run in runs)
    return sorted(results.get(timeout=5) for _ in runs)


def test_two_processes_on_one_ledger_never_lose_a_run(tmp_path) -> None:
    path = tmp_path / "ledger.json"
    assert _race(path, 10.0) == ["recorded", "refused"]
    ledger = PrivacyLedger(path, source=SOURCE)
    assert len(ledger.runs) == 1 and ledger.reserved == [] and ledger.spent(delta=DELTA) == pytest.approx(ONE)

    path = tmp_path / "roomy.json"
    assert _race(path, 20.0) == ["recorded", "recorded"]
    ledger = PrivacyLedger(path, source=SOURCE)
    assert len(ledger.runs) == 2 and ledger.reserved == [] and ledger.spent(delta=DELTA) == pytest.approx(TWO)
