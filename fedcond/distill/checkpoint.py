"""The checkpoint archive of a pixel-optimisation run: write it atomically, read it back checked.

A checkpoint is one ``.npz`` file holding the synthetic images, the optimiser's momentum, the
run's generator state, the iteration reached, the run identity (a JSON text that a resumed run
must match), the losses and seconds of the iterations it covers, and the matching loss's own
state (its ``state_dict`` entries, stored under their own names).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["RESERVED_KEYS", "Checkpoint", "History", "identity_differences", "load_checkpoint", "save_checkpoint"]

#: entries the loop itself writes; a matching loss's state must use other names
RESERVED_KEYS = frozenset({"images", "momentum", "generator", "iteration", "run", "losses", "seconds"})


@dataclass(frozen=True)
class History:
    """Losses and optimisation seconds of the iterations a checkpoint covers."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` read, not yet checked against the run resuming it."""

    images: torch.Tensor
    momentum: np.ndarray
    generator_state: torch.Tensor
    iteration: int
    run_identity: str | None
    history: History
    loss_state: dict[str, torch.Tensor]


def save_checkpoint(
    path: Path,
    *,
    images: torch.Tensor,
    momentum: torch.Tensor | None,
    generator: torch.Generator,
    iteration: int,
    run_identity: str,
    history: History,
    loss_state: Mapping[str, torch.Tensor],
) -> None:
    """Write a checkpoint to ``path`` through a temporary file, so a crash never leaves half of one.

    Raises
    ------
    ValueError
        If an entry of ``loss_state`` uses one of the loop's own names.
    """
    clashing = sorted(RESERVED_KEYS & set(loss_state))
    if clashing:
        raise ValueError(f"matching-loss state entries {clashing} clash with the checkpoint's own entries")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        np.savez(
            fh,
            images=images.detach().cpu().numpy(),
            momentum=(momentum.cpu().numpy() if momentum is not None else np.zeros(0, np.float32)),
            generator=generator.get_state().numpy(),
            iteration=np.array(iteration, dtype=np.int64),
            run=np.array(run_identity),
            losses=np.asarray(history.losses, dtype=np.float64),
            seconds=np.array(history.seconds, dtype=np.float64),
            **{k: v.cpu().numpy() for k, v in loss_state.items()},
        )
    tmp.replace(path)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read the checkpoint at ``path``.

    A checkpoint without recorded losses and seconds (such as the federated warm start) reads
    with an empty :class:`History`.

    Raises
    ------
    ValueError
        If the file is unreadable or lacks an entry.
    """
    try:
        with np.load(path, allow_pickle=False) as ck:
            return Checkpoint(
                images=torch.from_numpy(np.array(ck["images"])),
                momentum=np.array(ck["momentum"]),
                generator_state=torch.from_numpy(np.array(ck["generator"])),
                iteration=int(ck["iteration"]),
                run_identity=str(ck["run"]) if "run" in ck.files else None,
                history=History(
                    [float(v) for v in np.array(ck["losses"]).reshape(-1)] if "losses" in ck.files else [],
                    float(ck["seconds"]) if "seconds" in ck.files else 0.0,
                ),
                loss_state={
                    name: torch.from_numpy(np.array(ck[name])) for name in ck.files if name not in RESERVED_KEYS
                },
            )
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint gets one message
        raise ValueError(f"checkpoint {path} is unreadable or corrupted: {exc}") from exc


def identity_differences(stored: str | None, current: str) -> str:
    """A short description of how two run identities differ, for the resume error."""
    if stored is None:
        return "it carries no run identity: written by an older fedcond"
    try:
        old, new = json.loads(stored), json.loads(current)
    except ValueError:
        return "its run identity is unreadable"

    def flat(tree: object, prefix: str = "") -> dict[str, object]:
        if isinstance(tree, dict):
            out: dict[str, object] = {}
            for key, value in tree.items():
                out.update(flat(value, f"{prefix}{key}."))
            return out
        return {prefix.rstrip("."): tree}

    old_flat, new_flat = flat(old), flat(new)
    differing = (k for k in old_flat.keys() | new_flat.keys() if old_flat.get(k) != new_flat.get(k))
    keys = sorted(differing, key=lambda k: (not k.endswith(".kind"), k))  # a changed kind explains the rest
    shown = ", ".join(f"{k}: {old_flat.get(k)!r} -> {new_flat.get(k)!r}" for k in keys[:4])
    return shown + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
