"""A persistent differential-privacy ledger: one node's spending, on the node's own disk.

Every DP-DM run a node serves is a composition of subsampled Gaussian mechanisms on the same
data. An accountant kept in memory forgets them when the node restarts or a new federated run
begins, and the budget silently starts afresh. :class:`PrivacyLedger` keeps the accountant's
history in a JSON file bound to one *data source* (a digest of the data it protects): every run
is checked against the node's lifetime budget before it touches the data and recorded, before
its set leaves the node, with an atomic write.

Runs that overlap (two federated runs on one SuperNode, simulated clients sharing one ledger
file) share the file safely. Every check and every record holds an exclusive lock on a sibling
file (``<ledger>.lock``, :func:`fcntl.flock`), re-reads the ledger under it and replaces the file
atomically. A check that passes *reserves* the run's projected spend in the file; later checks
count the reservations of the runs in flight as spent, so two runs that each fit the budget
alone but not together cannot both pass. :meth:`PrivacyLedger.record` settles the reservation
with the iterations the run made. A run that dies between its check and its record leaves its
reservation charged: the budget errs towards privacy, and an operator who knows that no run is
in flight may delete the entry from ``reserved`` (each names its process, host and start time).
The lock is advisory and needs a file system with working POSIX locks (a local disk).

File format (JSON, no pickle; version 1 files, which have no ``reserved``, are read too)::

    {"format": "fedcond-dp-ledger", "version": 2, "source": "<digest>", "mechanism": "rdp",
     "history": [[noise_multiplier, sample_rate, steps], ...],
     "runs": [{"steps": 200, "epsilon_after": 3.1, "delta": 1e-05}, ...],
     "reserved": [{"id": "<hex>", "noise_multiplier": 1.2, "sample_rate": 0.1, "steps": 200,
                   "pid": 4242, "host": "node-1", "since": "2025-01-01T12:00:00+00:00"}, ...]}
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import fcntl
import json
import logging
import math
import numbers
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from fedcond.digests import tensor_digest
from fedcond.privacy.accounting import PrivacyAccountant, PrivacyBudgetError

__all__ = [
    "LEDGER_FORMAT",
    "LedgerError",
    "PrivacyLedger",
    "check_ledger_writable",
    "check_lifetime_budget",
    "data_source_digest",
]

logger = logging.getLogger(__name__)

LEDGER_FORMAT = "fedcond-dp-ledger"
#: The version this module writes; it reads every version in :data:`_READABLE`.
_VERSION = 2
_READABLE = (1, 2)


class LedgerError(PrivacyBudgetError):
    """The ledger file is corrupt, unwritable, belongs to another data source, or the budget is spent."""


def _real(value: object) -> bool:
    """A real number (NumPy scalars included), not a boolean."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_lifetime_budget(*, budget_epsilon: float | None, budget_delta: float) -> None:
    """Refuse a lifetime budget that reads as no budget: ``budget_epsilon`` (when given) must be a
    finite number > 0 and ``budget_delta`` lie strictly between 0 and 1.

    Raises
    ------
    LedgerError
        Naming the setting and its value.
    """
    if budget_epsilon is not None and not (
        _real(budget_epsilon) and math.isfinite(budget_epsilon) and budget_epsilon > 0
    ):
        raise LedgerError(f"the lifetime budget_epsilon must be a finite number > 0, got {budget_epsilon!r}")
    if not (_real(budget_delta) and 0 < budget_delta < 1):
        raise LedgerError(f"the lifetime budget_delta must lie strictly between 0 and 1, got {budget_delta!r}")


def data_source_digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    """A digest identifying a node's data (SHA-256 of its images and labels)."""
    return tensor_digest(images, labels)


def _unwritable(path: Path, exc: OSError) -> str:
    """The one-line reason why the folder of ledger ``path`` cannot hold it.

    It names the folder, not the file: the per-partition ledgers a node derives from one
    policy path share the folder, and the node reports the error ``fedcond policy`` reports.
    """
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        reason = f"{blocker} is a file, not a folder"
    else:
        reason = exc.strerror or str(exc)
    return f"the DP ledger's folder {path.parent} cannot be created or written ({reason})"


def check_ledger_writable(path: str | Path) -> None:
    """Check that the node can write the ledger ``path``, leaving the disk as it found it.

    Creates the ledger's folder (and any missing parent), writes and removes a probe file in it,
    then removes the folders it created. The error is the one a run would meet when it first
    writes the ledger, raised before any run starts.

    Parameters
    ----------
    path : str | Path
        The ledger file (it need not exist yet).

    Raises
    ------
    LedgerError
        When ``path`` is a folder, or its folder cannot be created or written (one line, naming
        the folder and the reason).
    """
    path = Path(path)
    if path.is_dir():
        raise LedgerError(f"DP ledger {path} is a folder, not a file")
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise LedgerError(_unwritable(path, exc)) from exc
    finally:
        # the folders are created by the first run that writes the ledger, not by a check
        for folder in missing:
            with contextlib.suppress(OSError):
                folder.rmdir()



def _row_number(value: Any) -> float:
    """A ledger row's JSON number as a float; a string, a boolean, ``null`` or a non-finite
    value (an infinite noise multiplier reads as no spend) is a corrupt row, not a value."""
    if not _real(value) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)


def _row_steps(value: Any) -> int:
    """A ledger row's JSON integer; a fraction would be truncated (fewer steps charged), so it is corrupt."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not a whole number of steps")
    return value

class PrivacyLedger:
    """A node's DP accountant history, persisted in ``path`` and bound to ``source``.

    Every :meth:`check` and :meth:`record` re-reads the file under an exclusive lock, so ledger
    objects of overlapping runs (in one process or several) see each other's spending; the
    attributes hold the file's content as last read.

    Parameters
    ----------
    path : str | Path
        The ledger file (created on the first :meth:`check` or :meth:`record`).
    source : str
        The data source's identity (:func:`data_source_digest`).
    mechanism : str
        Accountant (``rdp`` or ``prv``) of a new ledger; an existing file keeps its own.

    Attributes
    ----------
    runs : list[dict]
        The recorded runs (steps, epsilon after the run, delta).
    reserved : list[dict]
        The reservations of the runs in flight (checked, not yet recorded), this object's and
        other objects'.
    accountant : PrivacyAccountant
        The recorded runs' composition.

    Raises
    ------
    LedgerError
        When the file exists but is corrupt, is not a ledger, has an unknown version, or was
        written for another data source (each named, with the path).
    """

    def __init__(self, path: str | Path, *, source: str, mechanism: str = "rdp") -> None:
        self.path = Path(path)
        self.source = source
        self._new_mechanism = mechanism
        self.runs: list[dict[str, Any]] = []
        self.reserved: list[dict[str, Any]] = []
        self.accountant = PrivacyAccountant(mechanism)
        # ids of the reservations this object made and has not settled, oldest first
        self._own: list[str] = []
        if self.path.exists():
            self._load()

    # ------------------------------------------------------------------------- the file
    def _load(self) -> None:
        if self.path.is_dir():
            raise LedgerError(f"DP ledger {self.path} is a folder, not a file")
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LedgerError(f"DP ledger {self.path} is unreadable or corrupt: {exc}") from exc
        if not isinstance(state, dict) or state.get("format") != LEDGER_FORMAT:
            raise LedgerError(f"{self.path} is not a fedcond DP ledger (no format {LEDGER_FORMAT!r})")
        if state.get("version") not in _READABLE:
            raise LedgerError(
                f"DP ledger {self.path} has version {state.get('version')!r}; this fedcond reads versions "
                f"{', '.join(map(str, _READABLE))} (a newer fedcond wrote it?)"
            )
        self.check_source(str(state.get("source")), recorded=True)
        history = state.get("history")
        runs = state.get("runs", [])
        reserved = state.get("reserved", [])
        if not isinstance(history, list) or not isinstance(runs, list) or not isinstance(reserved, list):
            raise LedgerError(f"DP ledger {self.path} is corrupt: 'history', 'runs' and 'reserved' must be lists")
        try:
            rows = [(_row_number(s), _row_number(q), _row_steps(n)) for s, q, n in history]
            pending = [
                (str(r["id"]), _row_number(r["noise_multiplier"]), _row_number(r["sample_rate"]),
                 _row_steps(r["steps"]))
                for r in reserved
            ]
            for run in runs:
                _row_steps(run["steps"]), _row_number(run["epsilon_after"]), _row_number(run["delta"])
        except (TypeError, ValueError, KeyError) as exc:
            raise LedgerError(f"DP ledger {self.path} is corrupt: bad history, run or reservation row ({exc})") from exc
        if any(not (s > 0 and 0 < q <= 1 and n > 0) for s, q, n in rows + [p[1:] for p in pending]):
            raise LedgerError(f"DP ledger {self.path} is corrupt: a history or reservation row is out of range")
        try:
            accountant = PrivacyAccountant(str(state.get("mechanism")))
        except Exception as exc:  # noqa: BLE001 - an unknown mechanism name in the file
            raise LedgerError(f"DP ledger {self.path}: unknown accountant {state.get('mechanism')!r}") from exc
        accountant.load_state_dict({"mechanism": accountant.mechanism, "history": rows})
        self.accountant = accountant
        self.runs = runs
        self.reserved = reserved

    def _reload(self) -> None:
        """Replace the attributes with the file's content (a missing file: an empty ledger)."""
        if self.path.exists():
            self._load()
        else:
            self.accountant = PrivacyAccountant(self._new_mechanism)
            self.runs, self.reserved = [], []

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the ledger's exclusive lock and re-read the file under it."""
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LedgerError(_unwritable(self.path, exc)) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # blocks while another run checks or records
            except OSError as exc:
                raise LedgerError(f"DP ledger {self.path}: cannot lock {lock} ({exc.strerror or exc})") from exc
            self._reload()
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _write(self) -> None:
        """Replace the file with :meth:`state_dict` atomically (a reader sees the old or the new file).

        Called under the lock, which also guards the fixed temporary file name.
        """
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with tmp.open("w", encoding="utf-8") as fh:
                json.dump(self.state_dict(), fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            # the rename itself reaches the disk only with the folder's entry
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise LedgerError(f"DP ledger {self.path} could not be written: {exc}") from exc

    # ------------------------------------------------------------------------- reading
    @property
    def mechanism(self) -> str:
        """The accountant the ledger composes with."""
        return self.accountant.mechanism

    def spent(self, *, delta: float) -> float:
        """Epsilon spent so far by every recorded run, at ``delta`` (reservations not included)."""
        return self.accountant.epsilon(delta=delta)

    def projected(self, *, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
        """Epsilon the ledger would show at ``delta`` once the runs in flight and one more run of
        ``steps`` steps are recorded (each charged for the steps it reserved)."""
        trial = copy.deepcopy(self.accountant)
        for entry in self.reserved:
            trial.step(
                noise_multiplier=float(entry["noise_multiplier"]),
                sample_rate=float(entry["sample_rate"]),
                steps=int(entry["steps"]),
            )
        trial.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        return trial.epsilon(delta=delta)

    def check_source(self, source: str, *, recorded: bool = False) -> None:
        """Refuse a data source other than this ledger's.

        ``source`` is the data's digest (:func:`data_source_digest`); with ``recorded`` it is the
        one the file records, checked against the source this ledger was opened for.

        Raises
        ------
        LedgerError
            Naming both digests' first characters and the path.
        """
        if source != self.source:
            file_side, data_side = (source, self.source) if recorded else (self.source, source)
            raise LedgerError(
                f"DP ledger {self.path} belongs to another data source ({file_side[:12]}..., "
                f"this node's data is {data_side[:12]}...): use one ledger file per data source"
            )

    # ------------------------------------------------------------------------- checking and recording
    def check(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        mechanism: str,
        budget_epsilon: float | None,
        budget_delta: float,
        reserve: bool = True,
    ) -> float:
        """Refuse a run that would take the node past its lifetime budget; return the projection.

        The file is re-read under the lock and the projection counts the runs in flight. With
        ``reserve`` the run's spend is reserved in the file under the same lock, until this
        object's :meth:`record` settles it or :meth:`cancel_reservation` withdraws it.

        Parameters
        ----------
        noise_multiplier, sample_rate, steps : float, float, int
            The run's mechanism and the most iterations it may make.
        mechanism : str
            The run's accountant; it must be the ledger's.
        budget_epsilon, budget_delta : float | None, float
            The node's lifetime budget (``None``: never refuse; a reservation is still made).
        reserve : bool
            Reserve the run's spend (``False``: only check, write nothing).

        Raises
        ------
        LedgerError
            When the run's accountant differs from the ledger's, the projected epsilon exceeds
            ``budget_epsilon`` (the message gives what is spent, reserved and left), or the file
            cannot be read or written.
        """
        check_lifetime_budget(budget_epsilon=budget_epsilon, budget_delta=budget_delta)
        with self._locked():
            if mechanism != self.mechanism:
                raise LedgerError(
                    f"DP ledger {self.path} composes with {self.mechanism!r}, the run asks {mechanism!r}: "
                    "one accountant per ledger"
                )
            after = self.projected(
                noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=budget_delta
            )
            if budget_epsilon is not None and after > budget_epsilon + 1e-9:
                spent = self.spent(delta=budget_delta)
                in_flight = f" and {len(self.reserved)} run(s) in flight" if self.reserved else ""
                raise LedgerError(
                    f"the node's DP budget is exhausted: spent epsilon {spent:.4f} of {budget_epsilon:g} "
                    f"(delta {budget_delta:g}) over {len(self.runs)} run(s){in_flight}; this run would bring it "
                    f"to {after:.4f}"
                )
            if reserve:
                entry = {
                    "id": uuid.uuid4().hex,
                    "noise_multiplier": float(noise_multiplier),
                    "sample_rate": float(sample_rate),
                    "steps": int(steps),
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                }
                self.reserved.append(entry)
                self._write()
                self._own.append(entry["id"])
        return after

    def record(self, *, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
        """Add one run and write the file atomically; return the epsilon spent so far at ``delta``.

        The run settles this object's oldest reservation (its reserved spend is replaced by the
        ``steps`` the run made). A run that was never checked is recorded all the same: a record
        never refuses, since the set it certifies already exists.
        """
        with self._locked():
            settled = self._own[0] if self._own else None
            self.reserved = [entry for entry in self.reserved if entry.get("id") != settled]
            self.accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
            epsilon = self.spent(delta=delta)
            self.runs.append({"steps": int(steps), "epsilon_after": epsilon, "delta": float(delta)})
            self._write()
            if settled is not None:
                self._own.pop(0)
        return epsilon

    def cancel_reservation(self) -> None:
        """Withdraw this object's oldest reservation without charging it (no-op when it has none).

        For a run that ends, before :meth:`record`, without releasing anything (its condenser
        failed, its result was not certified): nothing left the node, so nothing is spent.
        """
        if not self._own:
            return
        with self._locked():
            cancelled = self._own[0]
            self.reserved = [entry for entry in self.reserved if entry.get("id") != cancelled]
            self._write()
            self._own.pop(0)

    def state_dict(self) -> dict[str, Any]:
        """The file's content."""
        return {
            "format": LEDGER_FORMAT,
            "version": _VERSION,
            "source": self.source,
            **self.accountant.state_dict(),
            "runs": list(self.runs),
            "reserved": list(self.reserved),
        }
