"""Training the global model on the aggregated synthetic set (weighted loss, DSA)."""

from __future__ import annotations

import torch
from torch import nn

from fedcond.data.registry import DatasetSpec
from fedcond.distill.evaluate import augment_for, train_model
from fedcond.federated.aggregation import AggregatedSet
from fedcond.models import get_model

__all__ = ["train_global_model"]


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
) -> nn.Module:
    """A freshly initialised ``model_name`` trained on ``union`` with per-image loss weights.

    The recipe is the field's evaluation recipe (:func:`fedcond.distill.evaluate.train_model`:
    SGD with momentum, learning rate x0.1 after half of the epochs, DSA on every batch) with
    the weighted cross-entropy ``sum(w_i * ce_i) / sum(w_i)`` per batch.
    """
    model = get_model(model_name, spec, generator=generator)
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
    )
    return model.cpu()
