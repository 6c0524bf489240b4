"""ProximalTerm: FedProx's mu/2 ||w - w0||^2 as a loss hook, against explicit computations."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedcond.data import DatasetSplits
from fedcond.federated.client import local_train
from fedcond.federated.proximal import ProximalTerm
from fedcond.models import get_model


def test_the_term_is_half_mu_times_the_squared_distance_to_the_anchor() -> None:
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    hook = ProximalTerm(model, mu=0.3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.fill_(3.0)

    assert hook.distance(model).item() == pytest.approx(14.0)
    assert hook(model, torch.tensor(1.0)).item() == pytest.approx(1.0 + 0.5 * 0.3 * 14.0)


def test_the_anchor_is_a_snapshot_not_the_live_weights() -> None:
    model = nn.Linear(2, 1)
    hook = ProximalTerm(model, mu=1.0)
    assert hook.distance(model).item() == 0.0
    with torch.no_grad():
        model.bias.add_(2.0)
    assert hook.distance(model).item() == pytest.approx(4.0)


@pytest.mark.parametrize("mu", [-0.1, float("nan"), float("inf")])
def test_a_negative_or_non_finite_mu_is_refused(mu: float) -> None:
    with pytest.raises(ValueError, match="mu must be finite and >= 0"):
        ProximalTerm(nn.Linear(2, 1), mu=mu)


def _fedprox_reference(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, mu: float, epochs: int, lr: float,
    batch_size: int, generator: torch.Generator,
) -> nn.Module:
    """FedProx local SGD written out: cross-entropy + mu/2 ||w - w0||^2, momentum 0.9, wd 5e-4."""
    anchor = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            idx = order[start : start + batch_size]
            ce = F.cross_entropy(model(images[idx]).float(), labels[idx])
            drift = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
            loss = ce + 0.5 * mu * drift
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


def test_local_training_with_the_hook_matches_the_fedprox_loss_written_out(digits: DatasetSplits) -> None:
    data = digits.train.subset(list(range(80)))
    model = get_model("mlp", digits.spec, generator=torch.Generator().manual_seed(1))
    reference = copy.deepcopy(model)

    local_train(model, data, epochs=3, lr=0.05, batch_size=32, proximal_mu=0.7,
                generator=torch.Generator().manual_seed(2))
    _fedprox_reference(reference, data.images, data.labels, mu=0.7, epochs=3, lr=0.05, batch_size=32,
                       generator=torch.Generator().manual_seed(2))

    for trained, expected in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(trained, expected, rtol=0.0, atol=1e-6)


def test_local_training_with_the_hook_gives_the_recorded_weights(digits: DatasetSplits) -> None:
    """Same seed, same data, mu = 0.5: the weights match the values recorded for this recipe."""
    model = get_model("mlp", digits.spec, generator=torch.Generator().manual_seed(3))

    local_train(model, digits.train.subset(list(range(96))), epochs=3, lr=0.05, batch_size=32, proximal_mu=0.5,
                generator=torch.Generator().manual_seed(5))

    total = sum(float(p.detach().double().sum()) for p in model.parameters())
    squares = sum(float((p.detach().double() ** 2).sum()) for p in model.parameters())
    assert total == pytest.approx(3.3894386446648923, abs=1e-6)
    assert squares == pytest.approx(90.24662978625128, abs=1e-6)
