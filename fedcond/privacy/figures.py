"""Audit figures: nearest-neighbour pairs and ROC curves on log-log axes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fedcond.data.registry import DatasetSpec
from fedcond.plots import CLASSES_KEY, display_pixels, save_line_plot
from fedcond.privacy.membership import MembershipResult
from fedcond.privacy.recoverability import SpaceResult

__all__ = ["save_nearest_neighbours", "save_roc"]


def save_nearest_neighbours(
    space: SpaceResult,
    synthetic: torch.Tensor,
    train: torch.Tensor,
    held_out_reference: torch.Tensor,
    spec: DatasetSpec,
    path: str | Path,
    *,
    pairs: int = 8,
    synthetic_labels: torch.Tensor | None = None,
    train_labels: torch.Tensor | None = None,
    held_out_labels: torch.Tensor | None = None,
) -> Path:
    """The ``pairs`` synthetic images closest to a training image, one row each:
    synthetic | nearest train | nearest held-out, with the distances in the titles.

    Given the labels of the three image sets, every title names the image's class
    (``spec.class_name``), so a pair that crosses classes shows at a glance; the PNG then lists
    ``[synthetic, train, held-out]`` class names per row under :data:`~fedcond.plots.CLASSES_KEY`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # synthetic images far outside the pixel range (mmd matching) are shown stretched, as in synthetic.png
    shown_synthetic, stretched = display_pixels(synthetic, spec)
    order = torch.argsort(space.to_train.distances)[:pairs]
    nearest_train = spec.denormalise(train[space.to_train.indices[order]].float().cpu())
    nearest_held_out = spec.denormalise(held_out_reference[space.to_held_out.indices[order]].float().cpu())
    def class_of(labels: torch.Tensor | None, index: int) -> str:
        return "" if labels is None else spec.class_name(int(labels[index]))

    rows = max(1, order.numel())
    row_classes: list[list[str]] = []
    fig, axes = plt.subplots(rows, 3, figsize=(4.2, 1.4 * rows), squeeze=False)
    for r, i in enumerate(order.tolist()):
        names = [
            class_of(synthetic_labels, i),
            class_of(train_labels, int(space.to_train.indices[i])),
            class_of(held_out_labels, int(space.to_held_out.indices[i])),
        ]
        row_classes.append(names)
        kinds = ("synthetic", "train", "held-out")
        prefixes = [f"{kind} {name}".rstrip() for kind, name in zip(kinds, names, strict=True)]
        triple = (
            (shown_synthetic[i], prefixes[0]),
            (nearest_train[r], f"{prefixes[1]} d={float(space.to_train.distances[i]):.2f}"),
            (nearest_held_out[r], f"{prefixes[2]} d={float(space.to_held_out.distances[i]):.2f}"),
        )
        for c, (img, title) in enumerate(triple):
            pixels = img.permute(1, 2, 0).numpy()
            ax = axes[r][c]
            ax.imshow(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels, cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=6)
            ax.axis("off")
    note = "\nsynthetic images contrast-stretched" if stretched else ""
    fig.suptitle(f"closest pairs ({space.space} space, threshold {space.threshold:.2f}){note}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    has_labels = any(labels is not None for labels in (synthetic_labels, train_labels, held_out_labels))
    fig.savefig(path, dpi=120, metadata={CLASSES_KEY: json.dumps(row_classes)} if has_labels else None)
    plt.close(fig)
    return path


def save_roc(results: dict[str, MembershipResult], path: str | Path) -> Path:
    """ROC curves ``{target name: result}`` of every attack, log-log axes (FPR > 0 only)."""
    series = {}
    for target, result in results.items():
        for name, attack in result.attacks.items():
            fpr, tpr = attack.curve.fpr, attack.curve.tpr
            keep = (fpr > 0) & (tpr > 0)
            if keep.any():
                series[f"{target} {name} (AUC {attack.auc:.3f})"] = (
                    np.asarray(fpr[keep]).tolist(),
                    np.asarray(tpr[keep]).tolist(),
                )
    return save_line_plot(
        series, path, xlabel="false positive rate", ylabel="true positive rate", log_axes=True, diagonal=True,
        title="membership inference ROC",
    )
