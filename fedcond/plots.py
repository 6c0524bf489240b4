"""Figures saved as PNG next to metrics.json (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from fedcond.data.registry import DatasetSpec

__all__ = ["save_image_grid", "save_line_plot"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_image_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: DatasetSpec,
    path: str | Path,
    *,
    title: str | None = None,
    max_per_class: int = 10,
) -> Path:
    """One row per class, up to ``max_per_class`` images each, de-normalised to pixels."""
    plt = _pyplot()
    pixels = spec.denormalise(images.detach().float().cpu())
    classes = sorted(int(c) for c in torch.unique(labels))
    cols = max(1, min(max_per_class, max(int((labels == c).sum()) for c in classes)))
    fig, axes = plt.subplots(len(classes), cols, figsize=(cols * 0.9, len(classes) * 0.9), squeeze=False)
    for row, c in enumerate(classes):
        members = pixels[labels.cpu() == c][:cols]
        for col in range(cols):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(members):
                img = members[col].permute(1, 2, 0).numpy()
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        axes[row][0].set_title(str(c), fontsize=7, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    log_axes: bool = False,
    diagonal: bool = False,
) -> Path:
    """Curves ``{label: (x, y)}`` on one axis (accuracy curves, ROC curves)."""
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


