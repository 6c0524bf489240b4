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
            return self.augment(image.unsqueeze(0), generator=self.generator)[0]

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """The generator state, to resume an interrupted run with the same augmentations."""
        return {"seed": self.seed, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor | int]) -> None:
        """Restore :meth:`state_dict`."""
        self.generator.set_state(state["generator"])
