"""Supervised training and testing of one network on a tensor dataset.

:func:`train_model` is the project's one training loop: SGD with momentum and weight decay,
learning rate x0.1 at half of the epochs, optional per-batch augmentation and per-sample loss
weights. The evaluation protocol of :mod:`fedcond.distill.evaluate`, the federated server and
clients, GDumb-style continual learning and the privacy audits' target and shadow models all
train with it. A :class:`LossHook` adds a term to every step's loss (FedProx's proximal term
is one, :class:`fedcond.federated.proximal.ProximalTerm`), so the loop itself knows no
training scheme but plain supervised learning. :func:`predict_logits` and :func:`accuracy`
test a trained network.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fedcond.data.registry import ArrayDataset
from fedcond.devices import autocast_context, resolve_device
from fedcond.digests import tensor_digest

__all__ = ["BatchAugment", "LossHook", "TrainingCheckpointMismatch", "accuracy", "predict_logits", "train_model"]


class TrainingCheckpointMismatch(ValueError):
    """A training checkpoint holds the state of another training run (other data or settings)."""


class BatchAugment(Protocol):
    """A random transform of a batch of images (e.g. :class:`fedcond.distill.SiameseAugment`)."""

    def __call__(self, images: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Return ``images`` (``N x C x H x W``) transformed, drawing randomness from ``generator``."""
        ...


class LossHook(Protocol):
    """A term added to the training loss at every optimisation step.

    :func:`train_model` calls the hook with the model and the batch's data loss (a scalar
    tensor that carries the graph) and backpropagates what the hook returns, so the hook may
    add a regulariser that depends on the current weights.
    """

    def __call__(self, model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
        """Return the loss to backpropagate for this step."""
        ...


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
    augment: BatchAugment | None = None,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    mixed_precision: bool = False,
    loss_hook: LossHook | None = None,
    sample_weights: torch.Tensor | None = None,
    lr_decay: bool = True,
    on_epoch: Callable[[int], None] | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 10,
) -> nn.Module:
    """Train ``model`` in place with SGD and return it.

    Parameters
    ----------
    model : nn.Module
        The network (moved to ``device`` and put in training mode).
    images, labels : torch.Tensor
        Training data (any device; moved to ``device``).
    epochs : int
        Passes over the data; the learning rate drops x0.1 after half of them (``lr_decay``).
    lr, momentum, weight_decay : float
        The SGD optimiser's settings.
    batch_size : int
        Images per step; the last batch of an epoch may be smaller.
    augment : BatchAugment | None
        Applied independently to every training batch (DSA in the evaluation recipe).
    generator : torch.Generator
        Drives shuffling and augmentation.
    device : torch.device | str
        Where training runs.
    mixed_precision : bool
        Run the forward pass under autocast (the loss is computed in float32).
    loss_hook : LossHook | None
        Called at every step as ``loss_hook(model, loss)`` after the data loss is computed;
        its return value is backpropagated. ``None`` trains on the data loss alone.
    sample_weights : torch.Tensor | None
        Per-sample loss weights; each batch's loss is then ``sum(w_i * ce_i) / sum(w_i)``
        (the federated server weights synthetic images by the real samples they stand for).
    lr_decay : bool
        The x0.1 step at half of the epochs; off keeps ``lr`` throughout (FedAvg / FedProx
        local SGD, whose rounds are not one training schedule each).
    on_epoch : callable(epochs_done) | None
        Called after every epoch with the number of epochs finished.
    checkpoint : str | Path | None
        A file that keeps the training state (weights, optimiser, ``generator``, epochs done)
        every ``checkpoint_every`` epochs and at the end. When it exists, training continues
        from it and ends with the weights an uninterrupted run gives; a file written for other
        data or other settings is refused. ``model`` must arrive as it did for the first call
        (its architecture; its weights are replaced by the checkpoint's).
    checkpoint_every : int
        Epochs between checkpoints.

    Returns
    -------
    nn.Module
        ``model``, trained.

    Raises
    ------
    ValueError
        If ``epochs`` is negative or ``checkpoint_every`` below 1, or ``checkpoint`` is unreadable.
    TrainingCheckpointMismatch
        If ``checkpoint`` holds the state of another training run (the message names what differs).
    """
    device = resolve_device(device)
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    decay_at = epochs // 2 if lr_decay else -1
    x_all = images.to(device)
    y_all = labels.to(device)
    w_all = sample_weights.to(device) if sample_weights is not None else None
    n = x_all.shape[0]
    first_epoch = 0
    identity: dict[str, Any] = {}
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        identity = {
            "epochs": epochs, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
            "batch_size": batch_size, "lr_decay": lr_decay, "augment": type(augment).__name__,
            "data": tensor_digest(images, labels, sample_weights),
        }
        if checkpoint.exists():
            first_epoch = _restore_training(checkpoint, identity, model, optimizer, generator)
    for epoch in range(first_epoch, epochs):
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
            if loss_hook is not None:
                loss = loss_hook(model, loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if checkpoint is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
            _save_training(checkpoint, identity, epoch + 1, model, optimizer, generator)
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return model


def _save_training(
    path: Path, identity: dict[str, Any], epochs_done: int, model: nn.Module, optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> None:
    """Write the training state to ``path`` atomically (a kill mid-write keeps the previous file)."""
    state = {"identity": identity, "epochs_done": epochs_done, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "generator": generator.get_state()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _restore_training(
    path: Path, identity: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> int:
    """Load the state at ``path`` into the model, optimiser and generator; return the epochs done."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
        saved = state["identity"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear error
        raise ValueError(f"training checkpoint {path} is unreadable ({exc.__class__.__name__}: {exc})") from exc
    differing = [f"{key!r} is {saved.get(key)!r} there, {value!r} here" for key, value in identity.items()
                 if saved.get(key) != value]
    if differing:
        raise TrainingCheckpointMismatch(
            f"training checkpoint {path} belongs to another training run: {'; '.join(differing)}"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    return int(state["epochs_done"])


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
