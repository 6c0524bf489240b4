"""The field's evaluation protocol: fresh networks trained on a synthetic set, tested on real data.

:func:`evaluate_synthetic` trains ``runs`` freshly initialised networks on a synthetic set with
the dataset-distillation recipe (:func:`train_with_recipe`: :func:`fedcond.training.train_model`
with an :class:`~fedcond.config.EvalConfig`'s optimiser and schedule, DSA from
:func:`augment_for`) and reports test accuracy as mean +- std; an optional callback hears of
every finished epoch and tested network (the CLI draws its progress from it).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from fedcond.config import AugmentConfig, EvalConfig
from fedcond.data.registry import DIGIT_DATASETS, ArrayDataset, DatasetSpec
from fedcond.distill.augment import SiameseAugment
from fedcond.distill.synthetic import SyntheticSet
from fedcond.models import get_model
from fedcond.training import accuracy, train_model

__all__ = [
    "EvalProgress",
    "EvalResult",
    "augment_for",
    "evaluate_synthetic",
    "train_with_recipe",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    """Test accuracies of the evaluation runs (fractions in [0, 1])."""

    accuracies: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        """Mean test accuracy over the evaluation networks (``nan`` if none ran)."""
        return statistics.fmean(self.accuracies) if self.accuracies else float("nan")

    @property
    def std(self) -> float:
        """Population standard deviation of the test accuracies (0 with one network)."""
        return statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f}%"


@dataclass(frozen=True)
class EvalProgress:
    """Where the evaluation protocol stands, as passed to :func:`evaluate_synthetic`'s callback.

    Attributes
    ----------
    run, runs : int
        The network being trained (1-based) and how many the protocol trains.
    epoch, epochs : int
        Epochs this network has finished and the epochs it trains.
    accuracy : float | None
        The network's test accuracy (fraction), set once it has been tested, else None.
    """

    run: int
    runs: int
    epoch: int
    epochs: int
    accuracy: float | None = None

    @property
    def fraction(self) -> float:
        """Share of the whole protocol's epochs done, in ``[0, 1]``."""
        total = self.runs * self.epochs
        return ((self.run - 1) * self.epochs + self.epoch) / total if total else 1.0


def train_with_recipe(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: EvalConfig,
    *,
    spec: DatasetSpec,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    on_epoch: Callable[[int], None] | None = None,
) -> nn.Module:
    """:func:`fedcond.training.train_model` with the optimiser, schedule and DSA switch of an :class:`EvalConfig`."""
    return train_model(
        model,
        images,
        labels,
        epochs=recipe.epochs,
        lr=recipe.lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        batch_size=recipe.batch_size,
        augment=augment_for(spec) if recipe.dsa else None,
        generator=generator,
        device=device,
        on_epoch=on_epoch,
    )


def augment_for(spec: DatasetSpec, config: AugmentConfig | None = None) -> SiameseAugment:
    """The DSA augmentation appropriate for ``spec`` (no flips on digit datasets)."""
    return SiameseAugment(config, drop_flip=spec.name in DIGIT_DATASETS)


def evaluate_synthetic(
    synthetic: SyntheticSet | tuple[torch.Tensor, torch.Tensor],
    test: ArrayDataset,
    config: EvalConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: Callable[[EvalProgress], None] | None = None,
) -> EvalResult:
    """Train ``config.runs`` fresh networks on ``synthetic`` and test each on ``test``.

    Parameters
    ----------
    synthetic : SyntheticSet | (images, labels)
        Training data (a synthetic set or a coreset). A multi-formation set (``factor`` > 1)
        is decoded first (:meth:`SyntheticSet.decoded`).
    test : ArrayDataset
        The real held-out test set.
    config : EvalConfig
        Runs, epochs and the optimiser recipe.
    seed : int
        Run ``k`` initialises and trains from ``seed + k``.
    progress : callable(EvalProgress) | None
        Called after every epoch of every network, and once more when that network has been
        tested (with its ``accuracy``); ``runs x epochs`` steps in all, so a long protocol
        (3 networks x 300 epochs) can show where it is.

    Raises
    ------
    SyntheticSetError
        If the images do not match the test set's shape, hold NaN, or labels fall outside its
        classes (for a set and for a bare pair alike).
    ValueError
        If ``config.runs`` is negative.
    """
    if isinstance(synthetic, SyntheticSet):
        synthetic = synthetic.decoded()  # a multi-formation set trains on its decoded tiles
        images, labels = synthetic.images, synthetic.labels
    else:
        images, labels = synthetic
        # a bare (images, labels) pair gets the same checks as a set; only widths are adapted
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            images = images.float()
        if isinstance(labels, torch.Tensor) and not labels.is_floating_point():
            labels = labels.long()
    SyntheticSet(images, labels, {"num_classes": test.spec.num_classes}).validate(image_shape=test.spec.image_shape)
    if config.runs < 0:
        raise ValueError(f"eval runs must be >= 0, got {config.runs}")
    accuracies: list[float] = []
    for run in range(config.runs):
        generator = torch.Generator().manual_seed(seed + run)
        model = get_model(config.model, test.spec, generator=generator)
        on_epoch = None
        if progress is not None:

            def on_epoch(epoch: int, run: int = run) -> None:
                progress(EvalProgress(run=run + 1, runs=config.runs, epoch=epoch, epochs=config.epochs))

        train_with_recipe(
            model, images, labels, config, spec=test.spec, generator=generator, device=device, on_epoch=on_epoch
        )
        acc = accuracy(model, test, device=device)
        logger.info("evaluation run %d/%d: %.2f%%", run + 1, config.runs, 100 * acc)
        accuracies.append(acc)
        if progress is not None:
            progress(
                EvalProgress(run=run + 1, runs=config.runs, epoch=config.epochs, epochs=config.epochs, accuracy=acc)
            )
    return EvalResult(accuracies)
