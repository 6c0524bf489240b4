"""Multi-formation: several downsampled images stored in the space of one (Kim et al., ICML 2022).

IDC ("Dataset Condensation via Efficient Synthetic-Data Parameterization") and IDM (Zhao et
al., CVPR 2023) store ``factor x factor`` downsampled images in each synthetic image's pixels.
A stored image is split into a ``factor x factor`` grid of tiles and every tile is upsampled
back to the full size, so ``ipc`` stored images per class train a network as ``ipc x factor^2``
images, at the same storage and communication cost in pixels.

``decode_formation`` is differentiable, so DM optimises the stored pixels through it.
``encode_formation`` builds stored images from real ones (downsample, then tile): it is the
real initialisation, and ``decode_formation(encode_formation(x))`` is ``x`` at
``1 / factor`` resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["check_factor", "decode_formation", "encode_formation", "expand_labels", "formation_round_trip"]


def check_factor(factor: int, *, image_size: tuple[int, int] | None = None) -> None:
    """Refuse a factor that is not a positive integer dividing both image sides.

    Without ``image_size`` only the type and sign are checked.

    Raises
    ------
    ValueError
        Naming the factor and the image size.
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    if image_size is None:
        return
    height, width = image_size
    if height % factor or width % factor:
        raise ValueError(f"factor {factor} does not divide the image size {height}x{width}")
    if factor > 1 and min(height, width) // factor < 2:
        raise ValueError(f"factor {factor} would store {height // factor}x{width // factor} tiles; use a smaller one")


def decode_formation(images: torch.Tensor, *, factor: int) -> torch.Tensor:
    """Stored images ``N x C x H x W`` -> training images ``N * factor^2 x C x H x W``.

    The tiles of stored image ``n`` become training images ``n * factor^2`` to
    ``(n + 1) * factor^2 - 1``, row by row; each is upsampled bilinearly to ``H x W``.
    """
    if factor == 1:
        return images
    n, c, h, w = images.shape
    th, tw = h // factor, w // factor
    tiles = images.reshape(n, c, factor, th, factor, tw).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(n * factor * factor, c, th, tw)
    return F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)


def encode_formation(images: torch.Tensor, *, factor: int) -> torch.Tensor:
    """Training-size images ``N * factor^2 x C x H x W`` -> stored images ``N x C x H x W``.

    Every group of ``factor^2`` consecutive images is downsampled (antialiased bilinear) and
    tiled into one stored image, in the order :func:`decode_formation` reads them.

    Raises
    ------
    ValueError
        If the image count is not a multiple of ``factor^2``.
    """
    if factor == 1:
        return images
    m, c, h, w = images.shape
    per = factor * factor
    if m % per:
        raise ValueError(f"{m} images cannot be grouped {per} to a stored image (factor {factor})")
    th, tw = h // factor, w // factor
    small = F.interpolate(images, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
    tiles = small.reshape(m // per, factor, factor, c, th, tw).permute(0, 3, 1, 4, 2, 5)
    return tiles.reshape(m // per, c, h, w).contiguous()


def formation_round_trip(images: torch.Tensor, *, factor: int) -> torch.Tensor:
    """Each image as a multi-formation set of ``factor`` trains on it: stored as one tile
    (:func:`encode_formation`) and decoded again (:func:`decode_formation`), ``N x C x H x W``.

    The release gate compares a decoded tile with the client's images passed through the same
    round trip: a tile that copies a training image sits at about distance 0 from it there,
    while at full resolution the lost detail hides it.
    """
    if factor == 1:
        return images
    per = factor * factor
    return decode_formation(encode_formation(images.repeat_interleave(per, dim=0), factor=factor), factor=factor)[::per]


def expand_labels(labels: torch.Tensor, *, factor: int) -> torch.Tensor:
    """The labels of :func:`decode_formation`'s output: each stored label ``factor^2`` times."""
    return labels if factor == 1 else labels.repeat_interleave(factor * factor)
