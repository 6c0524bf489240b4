"""Training the global model on the aggregated synthetic set (weighted loss, DSA).

Training stops at the first non-finite logits (the loss of that batch would be non-finite) and
raises :class:`NonFiniteTraining`; a model whose parameters end non-finite raises it too. The
strategy then keeps the previous global model and counts the round as failed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fedcond.data.registry import DatasetSpec
from fedcond.distill.evaluate import augment_for
from fedcond.federated.aggregation import AggregatedSet
from fedcond.models import get_model
from fedcond.training import train_model

__all__ = ["NonFiniteTraining", "train_global_model"]


class NonFiniteTraining(RuntimeError):
    """Server training met a non-finite value; the message is the logged reason."""


def _stop_on_non_finite(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    if not bool(torch.isfinite(output).all()):
        raise NonFiniteTraining("non-finite logits (the training loss is not finite); training stopped")


def train_global_model(
    union: AggregatedSet,
    *,
    spec: DatasetSpec,
    model_name: str,
    epochs: int,
    lr: float,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    dsa: bool = True,
    checkpoint: Path | None = None,
) -> nn.Module:
    """A freshly initialised ``model_name`` trained on ``union`` with per-image loss weights.

    The recipe is the field's evaluation recipe (:func:`fedcond.training.train_model`:
    SGD with momentum, learning rate x0.1 after half of the epochs, DSA on every batch) with
    the weighted cross-entropy ``sum(w_i * ce_i) / sum(w_i)`` per batch. ``checkpoint`` (a file)
    keeps the training state every 10 epochs; a call that finds it continues from it.

    Raises
    ------
    NonFiniteTraining
        At the first non-finite logits, or when a parameter ends non-finite.
    """
    model = get_model(model_name, spec, generator=generator)
    hook = model.register_forward_hook(_stop_on_non_finite)
    try:
        train_model(
            model,
            union.images,
            union.labels,
            epochs=epochs,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            batch_size=batch_size,
            augment=augment_for(spec) if dsa else None,
            generator=generator,
            device=device,
            sample_weights=union.weights,
            checkpoint=checkpoint,
        )
    finally:
        hook.remove()
    bad = [
        name
        for name, value in model.state_dict().items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if bad:
        raise NonFiniteTraining(f"non-finite parameters after training ({', '.join(bad[:3])})")
    return model.cpu()
