"""Replay kinds by name: the storage policy and the plugin for ``none|random|herding|distilled``.

All three memories follow the same budget rules, so at a given ``memory_per_class`` (or
``max_memory``) they hold the same number of images after every experience:

* ``random``    -- :class:`~fedcond.continual.memory.RandomBuffer` (Avalanche's
  ``ClassBalancedBuffer``, reservoir sampling per class) with Avalanche's
  :class:`~avalanche.training.plugins.ReplayPlugin`;
* ``herding``   -- :class:`~fedcond.continual.herding.HerdingBuffer` (Avalanche's
  ``ParametricBuffer`` grouped by class, herding on the learner's embeddings) with ``ReplayPlugin``;
* ``distilled`` -- :class:`~fedcond.continual.buffers.DistilledBuffer` with
  :class:`~fedcond.continual.plugins.DistilledReplayPlugin`.

Every memory satisfies :class:`~fedcond.continual.memory.ReplayMemory` and is an Avalanche
``ExemplarsBuffer``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from avalanche.training.plugins import ReplayPlugin
from avalanche.training.plugins.strategy_plugin import SupervisedPlugin

from fedcond.config import ContinualConfig, DistillConfig, choices_of
from fedcond.continual.buffers import DistilledBuffer, class_quotas
from fedcond.continual.herding import HerdingBuffer
from fedcond.continual.memory import RandomBuffer, ReplayMemory
from fedcond.continual.plugins import DistilledReplayPlugin
from fedcond.data.registry import DatasetSpec

__all__ = ["MEMORY_KINDS", "REPLAY_KINDS", "make_replay_plugin", "make_storage_policy"]

#: replay kinds that keep a memory
MEMORY_KINDS = ("random", "herding", "distilled")
#: every value of ``--replay`` (``joint`` is the offline upper bound, no memory)
REPLAY_KINDS = choices_of(ContinualConfig, "replay")


def _random(max_size: int, adaptive: bool, num_classes: int | None, **_: object) -> ReplayMemory:
    return RandomBuffer(max_size, adaptive_size=adaptive, total_num_classes=num_classes)


def _herding(max_size: int, adaptive: bool, num_classes: int | None, **_: object) -> ReplayMemory:
    return HerdingBuffer(max_size, adaptive_size=adaptive, total_num_classes=num_classes)


def _distilled(
    max_size: int,
    adaptive: bool,
    num_classes: int | None,
    *,
    spec: DatasetSpec,
    distill: DistillConfig,
    device: torch.device | str,
    cache_dir: Path | None,
    progress: bool,
) -> ReplayMemory:
    return DistilledBuffer(
        max_size,
        spec=spec,
        distill=distill,
        adaptive_size=adaptive,
        total_num_classes=num_classes,
        device=device,
        cache_dir=cache_dir,
        progress=progress,
    )


_BUILDERS: dict[str, Callable[..., ReplayMemory]] = {
    "random": _random,
    "herding": _herding,
    "distilled": _distilled,
}


def make_storage_policy(
    kind: str,
    *,
    spec: DatasetSpec,
    memory_per_class: int,
    max_memory: int | None = None,
    distill: DistillConfig | None = None,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> ReplayMemory | None:
    """The memory of replay kind ``kind`` (``None`` for ``none`` and ``joint``).

    Parameters
    ----------
    kind : str
        A replay kind (:data:`REPLAY_KINDS`): ``none``, ``random``, ``herding``, ``distilled``,
        ``joint``.
    spec : DatasetSpec
        The stream's dataset (image shape, class count).
    memory_per_class : int
        Images per class (budget ``memory_per_class x num_classes``), unless ``max_memory``.
    max_memory : int | None
        A fixed total budget shared by the classes seen so far.
    distill : DistillConfig | None
        The condensation settings of a ``distilled`` memory (defaults when ``None``).
    device : torch.device | str
        Where a ``distilled`` memory is condensed.
    cache_dir : str | Path | None
        Reuse a ``distilled`` memory's condensed sets across runs (see :class:`DistilledBuffer`).
    progress : bool
        Show the condensation's progress bar.

    Raises
    ------
    ValueError
        Unknown kind, ``memory_per_class <= 0``, or a budget smaller than the number of classes.
    """
    if kind not in REPLAY_KINDS:
        raise ValueError(f"unknown replay kind {kind!r}; choose one of {', '.join(REPLAY_KINDS)}")
    if kind not in MEMORY_KINDS:
        return None
    num_classes = spec.num_classes
    if max_memory is None:
        if memory_per_class <= 0:
            raise ValueError(f"memory_per_class must be positive, got {memory_per_class}")
        max_size, adaptive, total = memory_per_class * num_classes, False, num_classes
    else:
        max_size, adaptive, total = max_memory, True, None
        class_quotas(range(num_classes), max_size=max_size)  # budget >= classes, or a clear error
    return _BUILDERS[kind](
        max_size,
        adaptive,
        total,
        spec=spec,
        distill=distill or DistillConfig(iterations=200),
        device=device,
        cache_dir=Path(cache_dir) if cache_dir is not None else None,
        progress=progress,
    )


def make_replay_plugin(
    buffer: ReplayMemory,
    *,
    batch_size: int | None = None,
    batch_size_mem: int | None = None,
    memory_augmentation: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> SupervisedPlugin:
    """The replay plugin for ``buffer``.

    ``DistilledReplayPlugin`` for a distilled memory or whenever ``memory_augmentation`` is
    given (any buffer: the same augmentation for every kind), Avalanche's ``ReplayPlugin``
    otherwise.
    """
    if isinstance(buffer, DistilledBuffer) or memory_augmentation is not None:
        return DistilledReplayPlugin(
            buffer, batch_size=batch_size, batch_size_mem=batch_size_mem, memory_augmentation=memory_augmentation
        )
    return ReplayPlugin(
        mem_size=buffer.max_size, batch_size=batch_size, batch_size_mem=batch_size_mem, storage_policy=buffer
    )
