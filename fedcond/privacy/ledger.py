"""A persistent differential-privacy ledger: one node's spending, on the node's own disk.

Every DP-DM run a node serves is a composition of subsampled Gaussian mechanisms on the same
data. An accountant kept in memory forgets them when the node restarts or a new federated run
begins, and the budget silently starts afresh. :class:`PrivacyLedger` keeps the accountant's
history in a JSON file bound to one *data source* (a digest of the data it protects): every run
is checked against the node's lifetime budget before it touches the data and recorded, before
its set leaves the node, with an atomic write.

File format (JSON, no pickle)::

    {"format": "fedcond-dp-ledger", "version": 1, "source": "<digest>", "mechanism": "rdp",
     "history": [[noise_multiplier, sample_rate, steps], ...],
     "runs": [{"steps": 200, "epsilon_after": 3.1, "delta": 1e-05}, ...]}
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

from fedcond.digests import tensor_digest
from fedcond.privacy.accounting import PrivacyAccountant, PrivacyBudgetError

__all__ = ["LEDGER_FORMAT", "LedgerError", "PrivacyLedger", "data_source_digest"]

LEDGER_FORMAT = "fedcond-dp-ledger"
_VERSION = 1


class LedgerError(PrivacyBudgetError):
    """The ledger file is corrupt, belongs to another data source, or the budget is spent."""


def data_source_digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    """A digest identifying a node's data (SHA-256 of its images and labels)."""
    return tensor_digest(images, labels)


class PrivacyLedger:
    """A node's DP accountant history, persisted in ``path`` and bound to ``source``.

    Parameters
    ----------
    path : str | Path
        The ledger file (created on the first :meth:`record`).
    source : str
        The data source's identity (:func:`data_source_digest`).
    mechanism : str
        Accountant (``rdp`` or ``prv``) of a new ledger; an existing file keeps its own.

    Raises
    ------
    LedgerError
        When the file exists but is corrupt, is not a ledger, or was written for another data
        source (each named, with the path).
    """

    def __init__(self, path: str | Path, *, source: str, mechanism: str = "rdp") -> None:
        self.path = Path(path)
        self.source = source
        self.runs: list[dict[str, Any]] = []
        self.accountant = PrivacyAccountant(mechanism)
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LedgerError(f"DP ledger {self.path} is unreadable or corrupt: {exc}") from exc
        if not isinstance(state, dict) or state.get("format") != LEDGER_FORMAT:
            raise LedgerError(f"{self.path} is not a fedcond DP ledger (no format {LEDGER_FORMAT!r})")
        if state.get("version") != _VERSION:
            raise LedgerError(f"DP ledger {self.path} has version {state.get('version')!r}, expected {_VERSION}")
        if state.get("source") != self.source:
            raise LedgerError(
                f"DP ledger {self.path} belongs to another data source ({str(state.get('source'))[:12]}..., "
                f"this node's data is {self.source[:12]}...): use one ledger file per data source"
            )
        history = state.get("history")
        runs = state.get("runs", [])
        if not isinstance(history, list) or not isinstance(runs, list):
            raise LedgerError(f"DP ledger {self.path} is corrupt: 'history' and 'runs' must be lists")
        try:
            rows = [(float(s), float(q), int(n)) for s, q, n in history]
        except (TypeError, ValueError) as exc:
            raise LedgerError(f"DP ledger {self.path} is corrupt: bad history row ({exc})") from exc
        if any(not (s > 0 and 0 < q <= 1 and n > 0) for s, q, n in rows):
            raise LedgerError(f"DP ledger {self.path} is corrupt: a history row is out of range")
        try:
            accountant = PrivacyAccountant(str(state.get("mechanism")))
        except Exception as exc:  # noqa: BLE001 - an unknown mechanism name in the file
            raise LedgerError(f"DP ledger {self.path}: unknown accountant {state.get('mechanism')!r}") from exc
        accountant.load_state_dict({"mechanism": accountant.mechanism, "history": rows})
        self.accountant = accountant
        self.runs = runs

    @property
    def mechanism(self) -> str:
        """The accountant the ledger composes with."""
        return self.accountant.mechanism

    def spent(self, *, delta: float) -> float:
        """Epsilon spent so far by every recorded run, at ``delta``."""
        return self.accountant.epsilon(delta=delta)

    def projected(self, *, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
        """Epsilon the ledger would show at ``delta`` after one more run of ``steps`` steps."""
        trial = copy.deepcopy(self.accountant)
        trial.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        return trial.epsilon(delta=delta)

    def check(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        mechanism: str,
        budget_epsilon: float | None,
        budget_delta: float,
    ) -> float:
        """Refuse a run that would take the node past its lifetime budget; return the projection.

        Raises
        ------
        LedgerError
            When the run's accountant differs from the ledger's, or the projected epsilon
            exceeds ``budget_epsilon`` (the message gives what is spent and what is left).
        """
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
            raise LedgerError(
                f"the node's DP budget is exhausted: spent epsilon {spent:.4f} of {budget_epsilon:g} "
                f"(delta {budget_delta:g}) over {len(self.runs)} run(s); this run would bring it to {after:.4f}"
            )
        return after

    def record(self, *, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
        """Add one run and write the file atomically; return the epsilon spent so far at ``delta``."""
        self.accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        epsilon = self.spent(delta=delta)
        self.runs.append({"steps": int(steps), "epsilon_after": epsilon, "delta": float(delta)})
        self._write()
        return epsilon

    def state_dict(self) -> dict[str, Any]:
        """The file's content."""
        return {
            "format": LEDGER_FORMAT,
            "version": _VERSION,
            "source": self.source,
            **self.accountant.state_dict(),
            "runs": list(self.runs),
        }

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(self.state_dict(), fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)
