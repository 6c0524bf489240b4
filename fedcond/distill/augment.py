"""Differentiable siamese augmentation (DSA, Zhao & Bilen, ICML 2021).

Augmentation is split into *sampling* parameters (:meth:`SiameseAugment.sample`) and
*applying* them (:meth:`SiameseAugment.apply`). Each sample of a batch is mapped to a
parameter *slot*; giving a real image and a synthetic image the same slot applies the very
same transform to both, which is what "siamese" means. Every transform is differentiable with
respect to the images, and all randomness comes from an explicit ``torch.Generator``.

As in the reference implementation's single mode, one transform family (``color``, ``crop``,
``cutout``, ``flip``, ``scale`` or ``rotate``) is drawn per call, and per-slot parameters are
drawn for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedcond.config import AugmentConfig, choices_of

__all__ = ["LAYOUTS", "TRANSFORMS", "AugmentParams", "SiameseAugment"]

TRANSFORMS = ("color", "crop", "cutout", "flip", "scale", "rotate")
#: Who shares a parameter set inside DM (``AugmentConfig.layout``).
LAYOUTS = choices_of(AugmentConfig, "layout")


@dataclass(frozen=True)
class AugmentParams:
    """Sampled parameters: one transform family and a tensor per parameter, one row per slot."""

    transform: str
    values: dict[str, torch.Tensor]

    @property
    def num_slots(self) -> int:
        """Number of parameter sets sampled (rows of each parameter tensor)."""
        return next(iter(self.values.values())).shape[0]


class SiameseAugment:
    """Sample-then-apply differentiable augmentation.

    Parameters
    ----------
    config : AugmentConfig
        Strategy string and magnitudes (the DSA paper's defaults).
    drop_flip : bool
        Remove ``flip`` from the strategy (digit datasets: a mirrored digit is another symbol).
    """

    def __init__(self, config: AugmentConfig | None = None, *, drop_flip: bool = False) -> None:
        self.config = config or AugmentConfig()
        names = [n for n in self.config.strategy.split("_") if n]
        unknown = sorted(set(names) - set(TRANSFORMS))
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; choose from {list(TRANSFORMS)}")
        if drop_flip:
            names = [n for n in names if n != "flip"]
        if not names:
            raise ValueError(f"augmentation strategy {self.config.strategy!r} leaves no transform")
        if self.config.layout not in LAYOUTS:
            raise ValueError(f"augmentation layout {self.config.layout!r} is not one of {', '.join(LAYOUTS)}")
        self.transforms = tuple(names)

    # ------------------------------------------------------------------ sampling
    def sample(self, num_slots: int, *, generator: torch.Generator, image_size: tuple[int, int]) -> AugmentParams:
        """Draw one transform family and ``num_slots`` parameter sets from ``generator``."""
        cfg = self.config
        pick = int(torch.randint(len(self.transforms), (1,), generator=generator).item())
        name = self.transforms[pick]
        n = num_slots

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand((n, *shape), generator=generator, device=generator.device)

        if name == "color":
            values = {
                "brightness": (rand() - 0.5) * cfg.brightness,
                "saturation": rand() * cfg.saturation,
                "contrast": rand() + cfg.contrast,
            }
        elif name == "crop":
            h, w = image_size
            # dx moves along the width (affine theta[:, 0, 2]), dy along the height
            sx, sy = int(w * cfg.crop_pad + 0.5), int(h * cfg.crop_pad + 0.5)
            values = {
                "dx": torch.randint(-sx, sx + 1, (n,), generator=generator, device=generator.device).float(),
                "dy": torch.randint(-sy, sy + 1, (n,), generator=generator, device=generator.device).float(),
            }
        elif name == "cutout":
            values = {"cx": rand(), "cy": rand()}
        elif name == "flip":
            values = {"flip": (rand() < 0.5).float()}
        elif name == "scale":
            lo, hi = 1.0 / cfg.scale, cfg.scale
            values = {"sx": rand() * (hi - lo) + lo, "sy": rand() * (hi - lo) + lo}
        else:  # rotate
            values = {"theta": (rand() - 0.5) * 2 * cfg.rotate_degrees / 180.0 * math.pi}
        return AugmentParams(name, values)

    # ------------------------------------------------------------------ applying
    def apply(self, images: torch.Tensor, params: AugmentParams, slots: torch.Tensor | None = None) -> torch.Tensor:
        """Apply ``params`` to ``images``; sample ``i`` uses parameter row ``slots[i]``.

        Parameters
        ----------
        images : torch.Tensor
            ``N x C x H x W``.
        params : AugmentParams
            From :meth:`sample`.
        slots : torch.Tensor | None
            Long tensor of length ``N``; ``None`` means ``arange(N)``.
        """
        n = images.shape[0]
        if slots is None:
            slots = torch.arange(n)
        v = {k: t.to(images.device)[slots.to(images.device)] for k, t in params.values.items()}
        name = params.transform
        x = images
        if name == "color":
            x = x + v["brightness"].view(-1, 1, 1, 1).to(x.dtype)
            mean_c = x.mean(dim=1, keepdim=True)
            x = (x - mean_c) * v["saturation"].view(-1, 1, 1, 1).to(x.dtype) + mean_c
            mean_all = x.mean(dim=(1, 2, 3), keepdim=True)
            return (x - mean_all) * v["contrast"].view(-1, 1, 1, 1).to(x.dtype) + mean_all
        if name == "flip":
            mask = v["flip"].view(-1, 1, 1, 1).to(x.dtype)
            return mask * x.flip(3) + (1 - mask) * x
        if name == "cutout":
            return x * self._cutout_mask(x, v["cx"], v["cy"])
        theta = self._affine(name, v, x)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    def __call__(self, images: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Non-siamese use: fresh parameters for every sample (training on synthetic data)."""
        params = self.sample(images.shape[0], generator=generator, image_size=tuple(images.shape[-2:]))
        return self.apply(images, params)

    def _affine(self, name: str, v: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        theta = torch.zeros(n, 2, 3, device=x.device)
        if name == "scale":
            theta[:, 0, 0], theta[:, 1, 1] = v["sx"], v["sy"]
        elif name == "rotate":
            c, s = torch.cos(v["theta"]), torch.sin(v["theta"])
            theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = c, s, -s, c
        else:  # crop: integer translation with zero padding, as in DSA
            h, w = x.shape[-2:]
            theta[:, 0, 0], theta[:, 1, 1] = 1.0, 1.0
            theta[:, 0, 2] = 2.0 * v["dx"] / max(w - 1, 1)
            theta[:, 1, 2] = 2.0 * v["dy"] / max(h - 1, 1)
        return theta

    def _cutout_mask(self, x: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        size_h, size_w = int(h * self.config.cutout + 0.5), int(w * self.config.cutout + 0.5)
        # centre in [0, H + (1 - size % 2)) as in the reference, then a box of the cutout size
        oy = (cy * (h + (1 - size_h % 2))).floor() - size_h // 2
        ox = (cx * (w + (1 - size_w % 2))).floor() - size_w // 2
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        inside = (
            (rows >= oy.view(-1, 1, 1))
            & (rows < (oy + size_h).view(-1, 1, 1))
            & (cols >= ox.view(-1, 1, 1))
            & (cols < (ox + size_w).view(-1, 1, 1))
        )
        return (~inside).unsqueeze(1).to(x.dtype)
