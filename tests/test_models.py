"""ConvNet-3 and MLP shapes, depth adaptation and seeded initialisation."""

from __future__ import annotations

import pytest
import torch

from fedcond.data.registry import get_spec
from fedcond.models import ConvNet, get_model


@pytest.mark.parametrize(
    ("name", "depth", "feature_dim"), [("mnist", 3, 2048), ("cifar10", 3, 2048), ("digits", 2, 512)]
)
def test_convnet_shapes(name: str, depth: int, feature_dim: int) -> None:
    spec = get_spec(name)
    model = get_model("convnet", spec)
    assert model.depth == depth and model.feature_dim == feature_dim
    x = torch.randn(2, *spec.image_shape)
    assert model(x).shape == (2, spec.num_classes)
    assert model.embed(x).shape == (2, feature_dim)
    assert isinstance(model.features[1], torch.nn.GroupNorm) and model.features[1].num_groups == 128


def test_seeded_init_is_reproducible_and_like_pytorch() -> None:
    spec = get_spec("mnist")
    a = get_model("convnet", spec, generator=torch.Generator().manual_seed(0))
    b = get_model("convnet", spec, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    conv = a.features[4]
    bound = 1 / (conv.weight[0].numel() ** 0.5)
    assert float(conv.weight.detach().abs().max()) <= bound
    assert float(conv.weight.detach().std()) == pytest.approx(bound / 3**0.5, rel=0.05)


@pytest.mark.parametrize("name", ["convnet", "mlp"])
def test_seeded_init_leaves_the_global_rng_untouched(name: str) -> None:
    """A continual run's data order follows the global RNG: building a seeded model must not move it."""
    torch.manual_seed(123)
    get_model(name, get_spec("digits"), generator=torch.Generator().manual_seed(0))
    after_seeded = torch.rand(3)
    torch.manual_seed(123)
    expected = torch.rand(3)
    assert torch.equal(after_seeded, expected)
    torch.manual_seed(123)
    get_model(name, get_spec("digits"))  # unseeded: PyTorch's default init draws from the global RNG
    assert not torch.equal(torch.rand(3), expected)


def test_mlp_and_unknown_model() -> None:
    spec = get_spec("digits")
    assert get_model("mlp", spec)(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        get_model("resnet", spec)
    with pytest.raises(ValueError, match="does not fit"):
        ConvNet(channels=1, num_classes=10, image_size=(8, 8), depth=3)
