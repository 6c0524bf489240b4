"""Training the global model on the aggregated synthetic set (weighted loss, DSA)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedcond.data.registry import DatasetSpec
from fedcond.devices import resolve_device
from fedcond.distill.evaluate import augment_for
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
    SGD with momentum, learning rate x0.1 after half of the epochs, DSA on every batch); the
    only difference is the weighted cross-entropy ``sum(w_i * ce_i) / sum(w_i)`` per batch.
    """
    if epochs < 0:
        raise ValueError(f"server epochs must be >= 0, got {epochs}")
    device = resolve_device(device)
    model = get_model(model_name, spec, generator=generator).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    augment = augment_for(spec) if dsa else None
    x_all, y_all, w_all = union.images.to(device), union.labels.to(device), union.weights.to(device)
    n = x_all.shape[0]
    for epoch in range(epochs):
        if epoch == epochs // 2 and epoch > 0:
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.1
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x, y, w = x_all[idx], y_all[idx], w_all[idx]
            if augment is not None:
                x = augment(x, generator=generator)
            loss = (F.cross_entropy(model(x), y, reduction="none") * w).sum() / w.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.cpu()
