"""Augmentation of replayed memory images (DSA, the transforms DM's images were learnt under).

A replay memory of 10 images per class is revisited hundreds of times while later experiences
train; without augmentation the learner memorises those few images. The dataset-distillation
field trains on synthetic images with differentiable siamese augmentation (DSA), and DM learns
its images under DSA, so the same transforms are the natural way to replay them.
:class:`MemoryAugmentation` applies one DSA transform, freshly drawn from a seeded
``torch.Generator``, to every memory image each time replay reads it; the current
experience's images are left alone.

It is used through :class:`~fedcond.continual.plugins.DistilledReplayPlugin`'s
``memory_augmentation`` argument, and works with any storage policy, so random, herding and
distilled memories can be compared with the same augmentation (``ContinualConfig.augment_memory``).
"""

from __future__ import annotations

import torch

from fedcond.config import AugmentConfig
from fedcond.data.registry import DatasetSpec
from fedcond.distill.evaluate import augment_for

__all__ = ["MemoryAugmentation"]


class MemoryAugmentation:
    """A per-image DSA transform with its own seeded generator.

    Parameters
    ----------
    spec : DatasetSpec
        The stream's dataset (``flip`` is dropped for digit datasets).
    seed : int
        Seeds the generator; the same seed and reading order give the same augmented images.
    config : AugmentConfig | None
        DSA magnitudes (the DSA paper's defaults).

    Examples
    --------
    >>> augment = MemoryAugmentation(spec, seed=0)                      # doctest: +SKIP
    >>> DistilledReplayPlugin(buffer, memory_augmentation=augment)      # doctest: +SKIP
    """

    def __init__(self, spec: DatasetSpec, *, seed: int, config: AugmentConfig | None = None) -> None:
        self.spec = spec
        self.seed = seed
        self.augment = augment_for(spec, config)
        self.generator = torch.Generator().manual_seed(seed)
        self._worker: tuple[int, torch.Generator] | None = None  # (worker seed, its generator)

    def _current_generator(self) -> torch.Generator:
        """``self.generator`` in the main process; in a DataLoader worker, one of its own.

        Each worker holds a copy of this object made when the loader starts: drawing from the
        copied generator would give every worker the same transforms, and the same again every
        epoch (the parent's generator never advances). A worker instead seeds a generator from
        ``seed`` and the worker seed PyTorch assigns (drawn from the global RNG each epoch, so
        still reproducible from a seeded run).
        """
        info = torch.utils.data.get_worker_info()
        if info is None:
            return self.generator
        if self._worker is None or self._worker[0] != info.seed:
            mixed = (self.seed * 1_000_003 + info.seed) % 2**63
            self._worker = (info.seed, torch.Generator().manual_seed(mixed))
        return self._worker[1]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Augment one ``C x H x W`` image (a fresh transform per call).

        Raises
        ------
        ValueError
            If ``image`` does not have the dataset's image shape.
        """
        if tuple(image.shape) != tuple(self.spec.image_shape):
            raise ValueError(
                f"memory image of shape {tuple(image.shape)}; "
                f"{self.spec.name} images are {tuple(self.spec.image_shape)}"
            )
        with torch.no_grad():
            return self.augment(image.unsqueeze(0), generator=self._current_generator())[0]

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """The generator state, to resume an interrupted run with the same augmentations."""
        return {"seed": self.seed, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor | int]) -> None:
        """Restore :meth:`state_dict`."""
        self.generator.set_state(state["generator"])
