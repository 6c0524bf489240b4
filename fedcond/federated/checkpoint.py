"""Per-round checkpoints of a federated run, so that a killed run can be continued.

After every round the server writes, into the run's checkpoint folder:

- ``model.npz``: the global model's arrays (``np.savez``, read back without pickle);
- ``strategy.npz``: the strategy's arrays (FedCond: the client sets of the union), when any;
- ``state.json``: the job's identity (its flat config and the simulated attack), the last
  finished round, the history entries so far and the strategy's JSON state;
- ``metrics.json``: this run's metrics, ``"complete": false`` until the last round.

Every file is replaced atomically (written aside, then renamed), model first and
``state.json`` last, so a kill at any moment leaves the previous round's checkpoint or the new
one, never a mixture. :meth:`RunCheckpoint.load` refuses a folder written by another job and
names the first config key that differs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from fedcond.metrics_file import json_safe, write_metrics

__all__ = ["CHECKPOINTS", "CLIENT_CHECKPOINTS", "CheckpointMismatch", "RunCheckpoint", "SavedRound"]

#: the folder under a run's ``out`` that holds one checkpoint folder per run (strategy)
CHECKPOINTS = "checkpoints"
#: the folder under a simulation's ``out`` where its simulated clients keep their condensation
#: checkpoints, when their policy names no folder (:class:`~fedcond.federated.policy.CheckpointPolicy`)
CLIENT_CHECKPOINTS = "client-checkpoints"

MODEL_FILE = "model.npz"
STRATEGY_FILE = "strategy.npz"
STATE_FILE = "state.json"
FORMAT_VERSION = 1


class CheckpointMismatch(ValueError):
    """The checkpoint folder holds another job's run."""


@dataclass(frozen=True)
class SavedRound:
    """A loaded checkpoint.

    Attributes
    ----------
    completed_round : int
        The last finished round.
    arrays : ArrayRecord
        The global model after that round.
    history : list[dict]
        ``metrics.json`` history entries of rounds ``0..completed_round``.
    strategy_state : dict
        The strategy's JSON state (empty for Flower's baselines).
    strategy_arrays : dict[str, np.ndarray]
        The strategy's arrays.
    complete : bool
        The run finished; ``metrics`` is then its final metrics.
    metrics : dict
        The last ``metrics.json`` written.
    """

    completed_round: int
    arrays: ArrayRecord
    history: list[dict[str, Any]]
    strategy_state: dict[str, Any]
    strategy_arrays: dict[str, np.ndarray]
    complete: bool
    metrics: dict[str, Any]


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    os.replace(tmp, path)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _first_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            return f"{key!r} is {saved.get(key)!r} there, {current.get(key)!r} here"
    return None


class RunCheckpoint:
    """The checkpoint folder of one run.

    Parameters
    ----------
    folder : Path
        Where the files live (created on the first save).
    identity : Mapping[str, Any]
        JSON-ready values that make this job this job (its flat config, the attack); a
        checkpoint written under another identity is refused.
    """

    def __init__(self, folder: str | Path, *, identity: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.identity = json_safe(dict(identity))

    def exists(self) -> bool:
        """Whether the folder holds a checkpoint."""
        return (self.folder / STATE_FILE).is_file()

    def save(
        self,
        *,
        completed_round: int,
        arrays: ArrayRecord,
        history: list[dict[str, Any]],
        metrics: Mapping[str, Any],
        strategy_state: Mapping[str, Any] | None = None,
        strategy_arrays: Mapping[str, np.ndarray] | None = None,
        complete: bool = False,
    ) -> None:
        """Write the checkpoint of a finished round (``complete``: of the finished run)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        _save_npz(self.folder / MODEL_FILE, {k: np.asarray(v.numpy()) for k, v in arrays.items()})
        if strategy_arrays:
            _save_npz(self.folder / STRATEGY_FILE, strategy_arrays)
        write_metrics(self.folder, {**metrics, "complete": complete})
        state = {
            "format": FORMAT_VERSION,
            "identity": self.identity,
            "completed_round": completed_round,
            "complete": complete,
            "model_keys": list(arrays.keys()),
            "history": history,
            "strategy": dict(strategy_state or {}),
        }
        tmp = self.folder / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(json_safe(state), indent=1, allow_nan=False, default=str) + "\n")
        os.replace(tmp, self.folder / STATE_FILE)

    def load(self) -> SavedRound | None:
        """The saved round, or ``None`` when the folder holds no checkpoint.

        Raises
        ------
        CheckpointMismatch
            When the checkpoint belongs to another job (the message names the differing key).
        """
        if not self.exists():
            return None
        state = json.loads((self.folder / STATE_FILE).read_text())
        difference = _first_difference(state.get("identity", {}), self.identity)
        if difference is not None:
            raise CheckpointMismatch(
                f"{self.folder} holds a checkpoint of another job ({difference}); "
                "resume it with the same settings or choose another --out"
            )
        model = _load_npz(self.folder / MODEL_FILE)
        arrays = ArrayRecord({k: Array(model[k]) for k in state["model_keys"]})
        strategy_path = self.folder / STRATEGY_FILE
        metrics_path = self.folder / "metrics.json"
        return SavedRound(
            completed_round=int(state["completed_round"]),
            arrays=arrays,
            history=list(state["history"]),
            strategy_state=dict(state.get("strategy", {})),
            strategy_arrays=_load_npz(strategy_path) if strategy_path.is_file() else {},
            complete=bool(state.get("complete", False)),
            metrics=json.loads(metrics_path.read_text()) if metrics_path.is_file() else {},
        )
