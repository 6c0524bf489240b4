"""How distribution matching samples real images and summarises their embeddings.

This is the seam between the DM engine and privacy: the engine asks a
:class:`RealStatistics` object for (1) the real batch of the iteration and (2) the per-class
mean embeddings of that batch. :class:`MeanStatistics` is the plain, non-private version
(a fixed-size batch per class without replacement, exact means). The differentially private
version (Poisson sampling, per-sample clipping, Gaussian noise, accounting) lives in
``fedcond.privacy`` and plugs in here, so the engine never imports Opacus. Everything the
engine reads from the object is declared by the protocol: the engine finds no behaviour by
inspecting the object's class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch

__all__ = ["MeanStatistics", "RealBatch", "RealStatistics", "class_means"]


class RealBatch(tuple):
    """``(indices, groups)``: rows of the training tensor and the class of each row."""

    __slots__ = ()

    def __new__(cls, indices: torch.Tensor, groups: torch.Tensor) -> RealBatch:
        return super().__new__(cls, (indices, groups))

    @property
    def indices(self) -> torch.Tensor:
        """Indices of the sampled real images in the training set."""
        return self[0]

    @property
    def groups(self) -> torch.Tensor:
        """Class of each sampled real image."""
        return self[1]


@runtime_checkable
class RealStatistics(Protocol):
    """What DM needs from the real side of each iteration.

    Attributes
    ----------
    augmentation_per_class : bool
        ``True`` asks the engine to draw one siamese-augmentation parameter set per class,
        shared by all of the class's real and synthetic images (the reference DSA's batch mode).
        A guarantee that needs each real embedding to depend on its own image only (DP) sets
        it: with per-sample parameters the transform of an image would depend on its rank in
        the sampled batch, i.e. on which other images were sampled. ``False`` leaves the choice
        to ``AugmentConfig.layout``.
    means_only : bool
        ``True`` when the real data may reach the synthetic set only through
        :meth:`class_means` (DP). The engine then refuses every setting that reads real images
        or their embeddings directly: ``matching="mmd"`` and IDM's embedder queue.
    """

    augmentation_per_class: bool
    means_only: bool

    def sample_batch(
        self, class_pools: list[torch.Tensor], *, generator: torch.Generator
    ) -> RealBatch:
        """Choose this iteration's real images: indices into the training tensor and classes."""
        ...

    def class_means(
        self, embeddings: torch.Tensor, groups: torch.Tensor, *, num_classes: int, generator: torch.Generator
    ) -> torch.Tensor:
        """``num_classes x D`` per-class mean embedding (rows of absent classes are unused)."""
        ...

    def fingerprint(self) -> dict[str, object]:
        """What identifies these statistics in a DM checkpoint (JSON-ready).

        A run whose statistics give another fingerprint (another DP plan, or non-private
        statistics) refuses to resume the checkpoint.
        """
        ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        """State of the statistics' own that a DM checkpoint keeps (empty when there is none)."""
        ...

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` when a DM run resumes from a checkpoint."""
        ...


def class_means(embeddings: torch.Tensor, groups: torch.Tensor, *, num_classes: int) -> torch.Tensor:
    """Exact per-class mean of ``embeddings`` (float32), zero rows for empty classes."""
    emb = embeddings.float()
    sums = torch.zeros(num_classes, emb.shape[1], device=emb.device).index_add_(0, groups, emb)
    counts = torch.bincount(groups, minlength=num_classes).clamp_min(1).to(emb.device)
    return sums / counts.unsqueeze(1)


class MeanStatistics:
    """Non-private statistics: up to ``batch_size`` images per class without replacement.

    Parameters
    ----------
    batch_size : int
        Real images per class and iteration (DM's ``batch_real``, 256 by default).
    """

    def __init__(self, *, batch_size: int = 256) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_real must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.augmentation_per_class = False
        self.means_only = False

    def sample_batch(self, class_pools: list[torch.Tensor], *, generator: torch.Generator) -> RealBatch:
        """Draw up to ``batch_size`` real images per class without replacement."""
        indices: list[torch.Tensor] = []
        groups: list[torch.Tensor] = []
        for c, pool in enumerate(class_pools):
            if pool.numel() == 0:
                continue
            take = min(self.batch_size, pool.numel())
            choice = torch.randperm(pool.numel(), generator=generator)[:take]
            indices.append(pool[choice])
            groups.append(torch.full((take,), c, dtype=torch.long))
        return RealBatch(torch.cat(indices), torch.cat(groups))

    def class_means(
        self, embeddings: torch.Tensor, groups: torch.Tensor, *, num_classes: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Exact per-class mean of ``embeddings`` (no noise: not private)."""
        return class_means(embeddings, groups, num_classes=num_classes)

    def fingerprint(self) -> dict[str, object]:
        """What identifies these statistics in a checkpoint (see ``DistributionMatching``)."""
        return {"kind": "mean", "batch_size": self.batch_size}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Nothing: the plain statistics draw from the engine's generator, which DM checkpoints itself."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Accept the empty state of :meth:`state_dict`.

        Raises
        ------
        ValueError
            When ``state`` holds entries: they were written by other statistics.
        """
        if state:
            raise ValueError(
                f"the checkpoint holds real-statistics state ({', '.join(sorted(state))}) that the plain "
                "MeanStatistics never writes: it was made by other statistics"
            )
