"""``DistilledReplayPlugin``: replay from a distilled memory, with any supervised strategy.

Used exactly like Avalanche's :class:`~avalanche.training.plugins.ReplayPlugin`: the buffer is
injected, and the plugin implements two hooks -- before a training experience it swaps the
strategy's dataloader for a :class:`~avalanche.benchmarks.utils.data_loader.ReplayDataLoader`
that adds ``batch_size_mem`` memory images to every minibatch; after it, it asks the buffer to
absorb the experience (``post_adapt``, the non-deprecated storage-policy hook).

With ``memory_augmentation`` (a :class:`~fedcond.continual.augment.MemoryAugmentation`) every
memory image is transformed each time it is replayed; the experience's own images are not.
The plugin accepts any Avalanche buffer, so random or herding memories can be replayed with the
same augmentation for an equal comparison.

>>> buffer = DistilledBuffer.per_class(10, spec=spec)           # doctest: +SKIP
>>> strategy = Naive(model=model, optimizer=opt, plugins=[DistilledReplayPlugin(buffer)])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from avalanche.benchmarks.utils.data_loader import ReplayDataLoader
from avalanche.training.plugins.strategy_plugin import SupervisedPlugin
from avalanche.training.storage_policy import ExemplarsBuffer

from fedcond.continual.benchmarks import dataset_tensors, to_avalanche_dataset

if TYPE_CHECKING:
    from avalanche.training.templates import SupervisedTemplate

__all__ = ["DistilledReplayPlugin"]


class DistilledReplayPlugin(SupervisedPlugin):
    """Experience replay from an injected storage policy (a :class:`DistilledBuffer` typically).

    Parameters
    ----------
    storage_policy : ExemplarsBuffer
        The memory; any Avalanche buffer works, ``DistilledBuffer`` is the point.
    batch_size : int | None
        Current-experience images per minibatch (``None``: the strategy's ``train_mb_size``).
    batch_size_mem : int | None
        Memory images per minibatch (``None``: the strategy's ``train_mb_size``).
    task_balanced_dataloader : bool
        Balance memory batches over task labels (as in ``ReplayPlugin``).
    memory_augmentation : callable | None
        Applied to each memory image every time it is replayed (``C x H x W`` in and out);
        ``None`` replays the images as stored.
    """

    def __init__(
        self,
        storage_policy: ExemplarsBuffer,
        *,
        batch_size: int | None = None,
        batch_size_mem: int | None = None,
        task_balanced_dataloader: bool = False,
        memory_augmentation: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(storage_policy, ExemplarsBuffer):
            raise TypeError(f"storage_policy must be an Avalanche ExemplarsBuffer, got {type(storage_policy).__name__}")
        for name, value in (("batch_size", batch_size), ("batch_size_mem", batch_size_mem)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.storage_policy = storage_policy
        self.batch_size = batch_size
        self.batch_size_mem = batch_size_mem
        self.task_balanced_dataloader = task_balanced_dataloader
        self.memory_augmentation = memory_augmentation

    def before_training_exp(
        self,
        strategy: SupervisedTemplate,
        num_workers: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        **kwargs: Any,
    ) -> None:
        """Mix memory into every minibatch (nothing to do while the memory is empty).

        Raises
        ------
        ValueError
            When the buffer was built for another dataset than the stream's (image shape),
            before anything trains on the experience.
        """
        self._check_stream(strategy)
        memory = self.storage_policy.buffer
        if len(memory) == 0:
            return
        if self.memory_augmentation is not None:
            images, labels = dataset_tensors(memory)
            memory = to_avalanche_dataset(images, labels, transform=self.memory_augmentation)
        strategy.dataloader = ReplayDataLoader(
            strategy.adapted_dataset,
            memory,
            oversample_small_tasks=True,
            batch_size=self.batch_size or strategy.train_mb_size,
            batch_size_mem=self.batch_size_mem or strategy.train_mb_size,
            task_balanced_dataloader=self.task_balanced_dataloader,
            num_workers=num_workers,
            shuffle=shuffle,
            drop_last=drop_last,
        )

    def _check_stream(self, strategy: SupervisedTemplate) -> None:
        """Refuse an experience whose images are not the buffer's dataset's (read from one sample)."""
        spec = getattr(self.storage_policy, "spec", None)
        if spec is None:  # an Avalanche buffer of another kind: it knows no dataset
            return
        dataset = strategy.adapted_dataset
        if len(dataset) == 0:
            return
        shape = tuple(torch.as_tensor(dataset[0][0]).shape)
        if shape != tuple(spec.image_shape):
            raise ValueError(
                f"the buffer was built for {spec.name} images of shape {tuple(spec.image_shape)}, the stream's "
                f"experience holds images of shape {shape}: build the buffer with the stream's spec "
                "(e.g. spec=benchmark.spec)"
            )

    def after_training_exp(self, strategy: SupervisedTemplate, **kwargs: Any) -> None:
        """Let the buffer absorb the experience just trained on."""
        self.storage_policy.post_adapt(strategy, strategy.experience)
