"""The accuracy-matrix heat map written next to ``metrics.json``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["save_accuracy_matrix"]


def save_accuracy_matrix(
    matrix: Sequence[Sequence[float]],
    path: str | Path,
    *,
    experience_classes: Sequence[Sequence[int]] | None = None,
    title: str | None = None,
    row_labels: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Heat map of ``A[i][j]`` (rows: after experience i; columns: test classes of experience j).

    ``row_labels`` replaces the default ``after i`` labels (``["joint"]`` for the offline bound).
    ``class_names`` (one per label, e.g. ``spec.class_names``) names each column's classes, one
    per line under the experience number, instead of their label numbers; the PNG then lists
    each column's class names under :data:`~fedcond.plots.CLASSES_KEY`.
    """
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.asarray(matrix, dtype=float) * 100
    rows, cols = values.shape
    # a minimum size, so a one-column matrix keeps its title and axis label readable
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.8 * cols), max(2.0, 1.0 + 0.7 * rows)))
    image = ax.imshow(values, vmin=0, vmax=100, cmap="viridis")
    for i in range(rows):
        for j in range(cols):
            ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if values[i, j] < 60 else "black")
    labels = [f"{j}" for j in range(cols)]
    if experience_classes is not None and class_names:
        labels = ["\n".join([str(j), *(class_names[int(k)] for k in c)]) for j, c in enumerate(experience_classes)]
    elif experience_classes is not None:
        labels = [f"{j}\n{tuple(c)}" for j, c in enumerate(experience_classes)]
    ax.set_xticks(range(cols), labels, fontsize=7)
    labels_y = list(row_labels) if row_labels is not None else [f"after {i}" for i in range(rows)]
    if len(labels_y) != rows:
        raise ValueError(f"{len(labels_y)} row labels for {rows} rows")
    ax.set_yticks(range(rows), labels_y, fontsize=7)
    ax.set_xlabel("test experience (classes)")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="accuracy (%)")
    fig.tight_layout()
    path = Path(path)
    metadata = None
    if experience_classes is not None and class_names:
        from fedcond.plots import CLASSES_KEY

        columns = [[class_names[int(k)] for k in c] for c in experience_classes]
        metadata = {CLASSES_KEY: json.dumps(columns)}
    fig.savefig(path, dpi=110, metadata=metadata)
    plt.close(fig)
    return path
