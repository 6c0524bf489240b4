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


def test_convnet_blocks_are_conv_instance_norm_relu_avgpool() -> None:
    model = get_model("convnet", get_spec("mnist"))
    kinds = [type(layer) for layer in model.features]
    assert kinds == [torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.ReLU, torch.nn.AvgPool2d] * 3
    for norm in model.features[1::4]:
        assert norm.num_groups == norm.num_channels == 128  # one group per channel: instance norm
        assert norm.affine and norm.weight.shape == (128,) and norm.bias.shape == (128,)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        normed = model.features[:2](x)
        assert (model.embed(x) >= 0).all()  # ReLU before every pooling: non-negative features
    # each image's each channel is normalised on its own
    torch.testing.assert_close(normed.mean(dim=(2, 3)), torch.zeros(3, 128), atol=1e-4, rtol=0)
    torch.testing.assert_close(normed.var(dim=(2, 3), unbiased=False), torch.ones(3, 128), atol=1e-2, rtol=0)


@pytest.mark.parametrize(
    ("image_size", "width", "depth", "padding", "feature_dim"),
    [
        ((32, 32), 16, 1, 1, 16 * 16 * 16),
        ((32, 32), 16, 2, 1, 16 * 8 * 8),
        ((32, 32), 32, 4, 1, 32 * 2 * 2),
        ((28, 28), 8, 2, 3, 8 * 8 * 8),  # 28x28 is padded to 32x32 by the first convolution
        ((28, 32), 8, None, 1, 8 * 3 * 4),  # only exactly 28x28 is
        ((16, 16), 8, None, 1, 8 * 2 * 2),
    ],
)
def test_convnet_width_and_depth_are_honoured(
    image_size: tuple[int, int], width: int, depth: int | None, padding: int, feature_dim: int
) -> None:
    model = ConvNet(channels=3, num_classes=7, image_size=image_size, width=width, depth=depth)
    convs = [layer for layer in model.features if isinstance(layer, torch.nn.Conv2d)]
    assert len(convs) == model.depth == (depth or 3)
    assert all(conv.out_channels == width for conv in convs) and convs[0].padding == (padding, padding)
    assert model.feature_dim == feature_dim
    x = torch.randn(2, 3, *image_size)
    assert model.embed(x).shape == (2, feature_dim) and model(x).shape == (2, 7)


def test_mlp_is_two_hidden_relu_layers_then_a_classifier() -> None:
    model = get_model("MLP", get_spec("digits"))  # names are case-insensitive
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 128), (128, 128), (128, 10)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 2
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    features = model.embed(x)
    assert features.shape == (4, model.feature_dim) == (4, 128) and (features >= 0).all()
    torch.testing.assert_close(model(x), model.classifier(features))
    assert type(get_model("ConvNet", get_spec("digits"))) is ConvNet


@pytest.mark.parametrize("name", ["convnet", "mlp"])
def test_seeded_init_follows_the_generator_not_the_global_rng(name: str) -> None:
    spec = get_spec("digits")
    torch.manual_seed(1)
    a = get_model(name, spec, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(2)
    b = get_model(name, spec, generator=torch.Generator().manual_seed(0))
    c = get_model(name, spec, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not any(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True) if p.dim() > 1)
    for module in a.modules():
        module.requires_grad_(False)
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            bound = 1 / module.weight[0].numel() ** 0.5
            assert module.bias is not None
            assert float(module.bias.abs().max()) <= bound
            assert (module.bias < 0).any() and (module.bias > 0).any()  # uniform in +-bound
        elif isinstance(module, torch.nn.GroupNorm):
            assert bool((module.weight == 1).all()) and bool((module.bias == 0).all())
