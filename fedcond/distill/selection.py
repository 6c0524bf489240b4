"""Condensers without an optimisation loop: random and herding coresets, k-means centroids.

Each is registered under its name and reached like DM (``get_condenser("herding", config)``),
so the CLI, the continual buffers and the benchmarks compare them through one interface. They
read only ``config.ipc`` and ``config.seed`` (herding also ``config.model``, its random
embedder) and give exactly the images of :func:`~fedcond.distill.coreset.select_coreset` and of
DM's ``kmeans`` start for the same seed. They follow the small-class policy of
:mod:`fedcond.distill.condenser` and take no start set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

import torch

from fedcond.config import DistillConfig
from fedcond.data.registry import ArrayDataset
from fedcond.devices import resolve_device
from fedcond.distill.condenser import UnsupportedOptionError, check_class_sizes, register_condenser
from fedcond.distill.coreset import CoresetSelector, HerdingSelector, RandomSelector, select_coreset
from fedcond.distill.dm import CondensationResult, initial_synthetic
from fedcond.distill.synthetic import SyntheticSet, dataset_meta

__all__ = ["HerdingCondenser", "KMeansCondenser", "RandomCondenser"]


class _SelectionCondenser:
    """Shared construction and checks of the loop-free condensers."""

    name: ClassVar[str]
    config_fields: ClassVar[frozenset[str] | None] = frozenset({"ipc", "seed"})

    def __init__(self, config: DistillConfig, *, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = resolve_device(device)

    def condense(
        self,
        data: ArrayDataset,
        *,
        start: torch.Tensor | None = None,
        on_iteration: Callable[[int, float], None] | None = None,
    ) -> CondensationResult:
        """``ipc`` images per class present (``on_iteration`` is never called: there is no loop).

        Raises
        ------
        UnsupportedOptionError
            If ``start`` is given: a selection has no start to replace.
        ShortClassError
            If a class holds at least one but fewer than ``ipc`` images.
        """
        if start is not None:
            raise UnsupportedOptionError(f"condenser {self.name!r} cannot honour start (it selects, it has no start)")
        if len(data) == 0:
            raise ValueError("cannot condense an empty dataset")
        skipped = check_class_sizes(data, needed=self.config.ipc, method=self.name)
        began = time.perf_counter()
        synthetic = self._select(data, skipped=skipped)
        return CondensationResult(synthetic, seconds=time.perf_counter() - began, skipped_classes=skipped)

    def _select(self, data: ArrayDataset, *, skipped: list[int]) -> SyntheticSet:
        raise NotImplementedError


class _CoresetCondenser(_SelectionCondenser):
    def _selector(self, data: ArrayDataset) -> CoresetSelector:
        raise NotImplementedError

    def _select(self, data: ArrayDataset, *, skipped: list[int]) -> SyntheticSet:
        return select_coreset(data, ipc=self.config.ipc, method=self._selector(data), seed=self.config.seed)


@register_condenser("random")
class RandomCondenser(_CoresetCondenser):
    """``ipc`` real images per class drawn uniformly (``select_coreset(method="random")``)."""

    name = "random"

    def _selector(self, data: ArrayDataset) -> CoresetSelector:
        return RandomSelector()


@register_condenser("herding")
class HerdingCondenser(_CoresetCondenser):
    """The herding coreset (Welling 2009) under a random ``config.model`` embedder."""

    name = "herding"
    config_fields = frozenset({"ipc", "seed", "model"})

    def _selector(self, data: ArrayDataset) -> CoresetSelector:
        return HerdingSelector(model=self.config.model, spec=data.spec)


@register_condenser("kmeans")
class KMeansCondenser(_SelectionCondenser):
    """Each class's ``ipc`` k-means centroids in pixel space (DM's ``kmeans`` start, unoptimised)."""

    name = "kmeans"

    def _select(self, data: ArrayDataset, *, skipped: list[int]) -> SyntheticSet:
        spec = data.spec
        classes = [c for c in range(spec.num_classes) if c not in skipped]
        generator = torch.Generator().manual_seed(self.config.seed)
        images, labels = initial_synthetic(
            data, ipc=self.config.ipc, init="kmeans", classes=classes, generator=generator
        )
        meta = {
            **dataset_meta(spec),
            "ipc": self.config.ipc,
            "method": self.name,
            "init": "kmeans",
            "seed": self.config.seed,
            "iterations": 0,
            "skipped_classes": skipped,
        }
        return SyntheticSet(images.float().contiguous(), labels, meta)
