"""The field's evaluation protocol and the shared supervised-training loop.

:func:`train_model` trains one network on a (small) tensor dataset: SGD with momentum and
weight decay, learning rate x0.1 at half of the epochs, optional DSA augmentation. It is used
by the evaluation protocol, the federated server, GDumb-style continual learning and the
privacy audits' target and shadow models. :func:`evaluate_synthetic` trains ``runs`` freshly
initialised networks on a synthetic set and reports test accuracy as mean +- std; an optional
callback hears of every finished epoch and tested network (the CLI draws its progress from it).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fedcond.config import AugmentConfig, EvalConfig
from fedcond.data.registry import DIGIT_DATASETS, ArrayDataset, DatasetSpec
from fedcond.devices import autocast_context, resolve_device
from fedcond.distill.augment import SiameseAugment
from fedcond.distill.synthetic import SyntheticSet
from fedcond.models import get_model

__all__ = [
    "EvalProgress",
    "EvalResult",
    "accuracy",
    "evaluate_synthetic",
    "predict_logits",
    "train_model",
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


def train_model(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 256,
    augment: SiameseAugment | None = None,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    mixed_precision: bool = False,
    proximal_mu: float = 0.0,
    sample_weights: torch.Tensor | None = None,
    lr_decay: bool = True,
    on_epoch: Callable[[int], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place with the DD evaluation recipe and return it.

    Parameters
    ----------
    model : nn.Module
        The network (moved to ``device``).
    images, labels : torch.Tensor
        Training data (any device; moved batch-wise).
    epochs : int
        Passes over the data; the learning rate drops x0.1 after half of them (``lr_decay``).
    augment : SiameseAugment | None
        DSA applied independently to every training batch.
    generator : torch.Generator
        Drives shuffling and augmentation.
    proximal_mu : float
        FedProx term ``mu/2 ||w - w0||^2`` towards the initial weights (0 disables).
    sample_weights : torch.Tensor | None
        Per-sample loss weights; each batch's loss is then ``sum(w_i * ce_i) / sum(w_i)``
        (the federated server weights synthetic images by the real samples they stand for).
    lr_decay : bool
        The recipe's x0.1 step at half of the epochs; off keeps ``lr`` throughout (FedAvg /
        FedProx local SGD, whose rounds are not one training schedule each).
    on_epoch : callable(epochs_done) | None
        Called after every epoch with the number of epochs finished.
    """
    device = resolve_device(device)
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    decay_at = epochs // 2 if lr_decay else -1
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    x_all = images.to(device)
    y_all = labels.to(device)
    w_all = sample_weights.to(device) if sample_weights is not None else None
    n = x_all.shape[0]
    for epoch in range(epochs):
        if epoch == decay_at and epoch > 0:
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.1
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x, y = x_all[idx], y_all[idx]
            if augment is not None:
                x = augment(x, generator=generator)
            with autocast_context(device, enabled=mixed_precision):
                logits = model(x)
            if w_all is None:
                loss = F.cross_entropy(logits.float(), y)
            else:
                w = w_all[idx]
                loss = (F.cross_entropy(logits.float(), y, reduction="none") * w).sum() / w.sum()
            if anchor is not None:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
                loss = loss + 0.5 * proximal_mu * prox
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return model


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
    """:func:`train_model` with the optimiser, schedule and DSA switch of an :class:`EvalConfig`."""
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


@torch.inference_mode()
def predict_logits(
    model: nn.Module, images: torch.Tensor, *, device: torch.device | str = "cpu", batch_size: int = 1024
) -> torch.Tensor:
    """Logits of ``model`` on ``images`` (float32, on CPU), computed in eval mode.

    The model is moved to ``device``; its train/eval mode is restored afterwards.
    """
    device = resolve_device(device)
    was_training = model.training
    model.to(device).eval()
    try:
        outputs = [
            model(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(outputs) if outputs else torch.zeros(0)


def accuracy(model: nn.Module, data: ArrayDataset, *, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``model`` on ``data`` (fraction)."""
    logits = predict_logits(model, data.images, device=device)
    return float((logits.argmax(1) == data.labels).float().mean())


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
