"""Audit figures: nearest-neighbour pairs and ROC curves on log-log axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedcond.data.registry import DatasetSpec
from fedcond.plots import display_pixels, save_line_plot
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
) -> Path:
    """The ``pairs`` synthetic images closest to a training image, one row each:
    synthetic | nearest train | nearest held-out, with the distances in the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # synthetic images far outside the pixel range (mmd matching) are shown stretched, as in synthetic.png
    shown_synthetic, stretched = display_pixels(synthetic, spec)
    order = torch.argsort(space.to_train.distances)[:pairs]
    nearest_train = spec.denormalise(train[space.to_train.indices[order]].float().cpu())
    nearest_held_out = spec.denormalise(held_out_reference[space.to_held_out.indices[order]].float().cpu())
    rows = max(1, order.numel())
    fig, axes = plt.subplots(rows, 3, figsize=(4.2, 1.4 * rows), squeeze=False)
    for r, i in enumerate(order.tolist()):
        triple = (
            (shown_synthetic[i], "synthetic"),
            (nearest_train[r], f"train d={float(space.to_train.distances[i]):.2f}"),
            (nearest_held_out[r], f"held-out d={float(space.to_held_out.distances[i]):.2f}"),
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
    fig.savefig(path, dpi=120)
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
