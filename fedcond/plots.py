"""Figures saved as PNG next to metrics.json (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fedcond.data.registry import DatasetSpec

__all__ = [
    "CLASSES_KEY",
    "STRETCH_ABOVE_RANGE",
    "display_pixels",
    "figure_classes",
    "save_image_grid",
    "save_line_plot",
]

#: PNG text key under which a figure lists, as a JSON array, the class names it labels (rows of
#: an image grid, pairs of the nearest-neighbour figure): tools and tests read what a figure
#: shows without reading pixels
CLASSES_KEY = "fedcond:classes"


def figure_classes(path: str | Path) -> list:
    """The class labels a figure saved by fedcond records under :data:`CLASSES_KEY` ([] if none)."""
    from PIL import Image

    with Image.open(path) as img:
        text = getattr(img, "text", {}) or {}
    return json.loads(text[CLASSES_KEY]) if CLASSES_KEY in text else []


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: a grid stretches each image when the median image spans more than this many times [0, 1]
STRETCH_ABOVE_RANGE = 1.5


def display_pixels(images: torch.Tensor, spec: DatasetSpec) -> tuple[torch.Tensor, bool]:
    """The ``[0, 1]`` pixels a grid shows for normalised ``images``, and whether they were stretched.

    Images in the data's range are de-normalised and clipped. Synthetic images can leave that
    range: DM's instance-normalised embedder cannot see an image's scale, and with
    ``matching="mmd"`` the images grow to several times it (a median span of 5.6 on digits,
    against 1.0 for real images and 1.15 for mean matching). Clipping would show them as
    black-and-white blocks, so when the median image spans more than ``STRETCH_ABOVE_RANGE``
    each image is min-max stretched to ``[0, 1]`` on its own instead.
    """
    # unclamped: how far the images reach outside [0, 1] decides the display
    pixels = spec.denormalise(images.detach().float().cpu(), clamp=False)
    if pixels.shape[0] == 0:
        return pixels, False
    flat = pixels.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    if float((high - low).median()) <= STRETCH_ABOVE_RANGE:
        return pixels.clamp(0, 1), False
    stretched = (flat - low) / (high - low).clamp_min(1e-12)
    return stretched.view_as(pixels), True


def save_image_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: DatasetSpec,
    path: str | Path,
    *,
    title: str | None = None,
    max_per_class: int = 10,
) -> Path:
    """One row per class, up to ``max_per_class`` images each, de-normalised to pixels.

    Each row is labelled with its class name (``spec.class_name``: CIFAR-10's "airplane", an
    ImageFolder's folder name, the label number where a dataset has no names); the PNG lists
    the row labels under :data:`CLASSES_KEY`. Images far outside the data's pixel range are
    shown each stretched to ``[0, 1]``, and the title says so (see :func:`display_pixels`).
    """
    plt = _pyplot()
    pixels, stretched = display_pixels(images, spec)
    if stretched:
        title = f"{title or ''}\n(outside the pixel range: each image contrast-stretched)".lstrip("\n")
    classes = sorted(int(c) for c in torch.unique(labels))
    cols = max(1, min(max_per_class, max(int((labels == c).sum()) for c in classes)))
    # at least 3 inches wide, so that the title stays readable above a single column (ipc 1)
    fig, axes = plt.subplots(len(classes), cols, figsize=(max(3.0, cols * 0.9), len(classes) * 0.9), squeeze=False)
    for row, c in enumerate(classes):
        members = pixels[labels.cpu() == c][:cols]
        for col in range(cols):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(members):
                img = members[col].permute(1, 2, 0).numpy()
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        axes[row][0].set_title(spec.class_name(c), fontsize=7, loc="left")
    if title:
        _fit_title(fig, title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120, metadata={CLASSES_KEY: json.dumps([spec.class_name(c) for c in classes])})
    plt.close(fig)
    return path


#: the share of a figure's width its title may take
_TITLE_WIDTH = 0.96


def _fit_title(fig: Any, title: str, *, fontsize: float) -> None:
    """Set ``title`` as the figure's title, its lines wrapped at words until each fits the figure's width.

    A grid of one column (ipc 1) is narrower than a title such as "dm cifar10 ipc=1 factor 2
    (noise init, 1000 it)"; unwrapped, the title is clipped at both edges of the saved PNG.
    """
    import textwrap

    text = fig.suptitle(title, fontsize=fontsize)
    renderer = fig.canvas.get_renderer()
    columns = max(len(line) for line in title.split("\n"))
    while text.get_window_extent(renderer).width > _TITLE_WIDTH * fig.bbox.width and columns > 8:
        columns = max(8, int(columns * 0.85))
        text.set_text("\n".join(textwrap.fill(line, columns) for line in title.split("\n")))


def save_line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    log_axes: bool = False,
    diagonal: bool = False,
    integer_x: bool = False,
) -> Path:
    """Curves ``{label: (x, y)}`` on one axis (accuracy curves, ROC curves).

    ``integer_x`` puts ticks on whole numbers only (rounds, experiences).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, (x, y) in series.items():
        ax.plot(list(x), list(y), marker="o" if len(x) < 30 else None, label=label)
    if diagonal:
        lo = 1e-4 if log_axes else 0.0
        ax.plot([lo, 1], [lo, 1], "k--", lw=0.8, label="chance")
    if log_axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
    if integer_x:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


