"""Replay memories as the continual runner sees them.

:class:`ReplayMemory` is the protocol: a budget, the content replay reads, the hook that
absorbs an experience, the images held per class and the time spent condensing. Every memory
:func:`~fedcond.continual.make_storage_policy` builds satisfies it and is also an Avalanche
``ExemplarsBuffer``, so Avalanche's and fedcond's replay plugins accept it:
:class:`~fedcond.continual.DistilledBuffer` (condensed images), :class:`RandomBuffer`
(reservoir sampling per class) and :class:`~fedcond.continual.HerdingBuffer` (herding on the
learner's embeddings). The two real-image memories share :class:`RealImageMemory`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from avalanche.benchmarks.utils.data import AvalancheDataset
from avalanche.training.storage_policy import ClassBalancedBuffer

from fedcond.continual.buffers import ArrivalOrder

__all__ = ["RandomBuffer", "RealImageMemory", "ReplayMemory"]


@runtime_checkable
class ReplayMemory(Protocol):
    """What the continual runner and the replay plugins use from a replay memory.

    Attributes
    ----------
    max_size : int
        The budget in stored images.
    """

    max_size: int

    @property
    def buffer(self) -> AvalancheDataset:
        """The samples replay trains on, as an Avalanche dataset of ``(x, y, task)``."""
        ...

    @property
    def condense_seconds(self) -> float:
        """Wall-clock seconds spent condensing experiences into memory (0 for real images)."""
        ...

    def post_adapt(self, agent_state: Any, exp: Any) -> None:
        """Absorb experience ``exp`` (Avalanche's storage-policy hook); ``agent_state`` carries
        the learner (``model``, ``device``) for memories that select by its features."""
        ...

    def class_counts(self) -> dict[int, int]:
        """Images stored per class: what the budget counts (a multi-formation memory counts
        stored images, not the tiles each trains as)."""
        ...


class RealImageMemory:
    """Counting for memories that store real images as their ``buffer`` samples.

    Mixed into Avalanche buffers (whose ``buffer`` is the stored dataset) to complete
    :class:`ReplayMemory`: such a memory condenses nothing and holds one sample per image.
    """

    buffer: AvalancheDataset

    @property
    def condense_seconds(self) -> float:
        """Always 0: real images are stored as they come."""
        return 0.0

    def class_counts(self) -> dict[int, int]:
        """Images held per class, classes in increasing order."""
        memory = self.buffer
        if len(memory) == 0:
            return {}
        labels = torch.as_tensor(list(memory.targets), dtype=torch.long)
        classes, counts = torch.unique(labels, return_counts=True)
        return {int(c): int(n) for c, n in zip(classes, counts, strict=True)}


class RandomBuffer(RealImageMemory, ClassBalancedBuffer):
    """Avalanche's class-balanced reservoir memory, extra images going to the oldest classes.

    Under an adaptive budget the ``max_size % n`` extra images go to the classes that arrived
    first (:class:`~fedcond.continual.buffers.ArrivalOrder`), as in every other replay kind.

    Parameters
    ----------
    max_size : int
        Budget in images.
    adaptive_size : bool
        ``True``: ``max_size`` shared by the classes seen so far; ``False``: every class gets
        ``max_size // total_num_classes``.
    total_num_classes : int | None
        Number of classes of the stream, for the fixed per-class mode.
    """

    def __init__(self, max_size: int, *, adaptive_size: bool = True, total_num_classes: int | None = None) -> None:
        super().__init__(max_size, adaptive_size=adaptive_size, total_num_classes=total_num_classes)
        self.seen_classes = ArrivalOrder()
