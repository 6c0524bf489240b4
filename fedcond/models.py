"""Networks used for condensation, evaluation and federated training.

``ConvNet`` is the dataset-distillation standard ConvNet-3: blocks of 3x3 convolution
(width 128), instance normalisation (``GroupNorm`` with one group per channel, affine),
ReLU and 2x2 average pooling, then a linear classifier. 28x28 single-channel inputs are
padded to 32x32 by the first convolution, as in the reference implementation; the depth
shrinks for small inputs (8x8 digits use two blocks) so the feature map never vanishes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from fedcond.data.registry import DatasetSpec

__all__ = ["ConvNet", "MLP", "available_models", "get_model"]


class ConvNet(nn.Module):
    """ConvNet-D with instance norm, the backbone of DC/DSA/DM.

    Parameters
    ----------
    channels : int
        Input channels.
    num_classes : int
        Output classes.
    image_size : tuple[int, int]
        Input height and width.
    width : int
        Convolution channels (128 in the literature).
    depth : int | None
        Number of conv blocks; ``None`` picks 3, or fewer for inputs smaller than 16x16.
    """

    def __init__(
        self,
        *,
        channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        width: int = 128,
        depth: int | None = None,
    ) -> None:
        super().__init__()
        height, width_px = image_size
        pad_first = 3 if (height, width_px) == (28, 28) else 1
        if pad_first == 3:
            height, width_px = 32, 32
        max_depth = max(1, int(math.log2(min(height, width_px))) - 1)
        self.depth = min(3, max_depth) if depth is None else depth
        if self.depth < 1 or self.depth > max_depth:
            raise ValueError(f"depth {self.depth} does not fit {image_size} inputs (1..{max_depth})")
        layers: list[nn.Module] = []
        in_ch = channels
        for d in range(self.depth):
            layers += [
                nn.Conv2d(in_ch, width, kernel_size=3, padding=pad_first if d == 0 else 1),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(kernel_size=2, stride=2),
            ]
            in_ch = width
            height, width_px = height // 2, width_px // 2
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * height * width_px
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features before the classifier (DM's embedding)."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class MLP(nn.Module):
    """Three-layer perceptron (128-128 hidden units, ReLU), flattening its input."""

    def __init__(
        self, *, channels: int, num_classes: int, image_size: tuple[int, int], hidden: int = 128
    ) -> None:
        super().__init__()
        in_features = channels * image_size[0] * image_size[1]
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
        )
        self.feature_dim = hidden
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Last hidden layer's activations."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


_MODELS: dict[str, Callable[..., nn.Module]] = {
    "convnet": ConvNet,
    "mlp": MLP,
}


def available_models() -> list[str]:
    """Names accepted by :func:`get_model`."""
    return sorted(_MODELS)


def get_model(
    name: str, spec: DatasetSpec, *, generator: torch.Generator | None = None
) -> nn.Module:
    """A freshly initialised network for ``spec``'s image shape and classes.

    Parameters
    ----------
    name : str
        ``convnet`` or ``mlp``.
    spec : DatasetSpec
        Gives channels, image size and class count.
    generator : torch.Generator | None
        When given, the initial weights are drawn from it (reproducible without touching the
        global RNG); otherwise PyTorch's default initialisation uses the global RNG.
    """
    try:
        factory = _MODELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(available_models())}") from None
    if generator is None:
        return factory(channels=spec.channels, num_classes=spec.num_classes, image_size=spec.image_size)
    # the layers' constructors run PyTorch's default init from the global RNG before
    # reset_parameters redraws every weight from ``generator``: fork the global RNG so that
    # throw-away draw leaves no trace (a continual run's data order follows the global RNG)
    with torch.random.fork_rng(devices=[]):
        model = factory(channels=spec.channels, num_classes=spec.num_classes, image_size=spec.image_size)
    return reset_parameters(model, generator=generator)


@torch.no_grad()
def reset_parameters(model: nn.Module, *, generator: torch.Generator) -> nn.Module:
    """Re-initialise ``model`` in place like PyTorch's defaults, drawing from ``generator``.

    Convolutions and linear layers get Kaiming-uniform weights (a=sqrt(5)) and uniform biases
    in ``+-1/sqrt(fan_in)``; normalisation layers get weight 1 and bias 0.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) gives this bound too
            w = torch.rand(module.weight.shape, generator=generator, device=generator.device)
            module.weight.copy_((w * 2 - 1) * bound)
            if module.bias is not None:
                b = torch.rand(module.bias.shape, generator=generator, device=generator.device)
                module.bias.copy_((b * 2 - 1) * bound)
        elif isinstance(module, (nn.GroupNorm, nn.BatchNorm2d, nn.LayerNorm)) and module.weight is not None:
            module.weight.fill_(1.0)
            module.bias.fill_(0.0)
    return model
