"""Aggregating validated client sets: concatenate per class, weight by real class counts.

Client ``k`` sends ``m_kc`` synthetic images for class ``c`` condensed from ``n_kc`` real ones.
Each such image stands for ``n_kc / m_kc`` real samples, so it gets the loss weight

    w = (n_kc / m_kc) * (M / N)

(``M`` synthetic images, ``N`` real samples in all). The weighted union then reproduces the
federation's real class distribution and, within a class, each client's share of it, while
the mean weight stays 1 (the learning rate keeps its meaning).

The union does not depend on the order the replies arrived in (nor on node IDs, which Flower's
simulation draws afresh each run): client sets are put in a canonical order, by a digest of their
content, before they are concatenated. The global model's training then depends only on the seed.

A multi-formation set (``distill.factor`` > 1) is decoded first: ``m_kc`` and ``M`` then count
decoded tiles, the images the global model trains on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedcond.federated.validation import ClientSet

__all__ = ["AggregatedSet", "aggregate_sets"]


@dataclass(frozen=True)
class AggregatedSet:
    """The server's training set for the global model.

    Attributes
    ----------
    images, labels : torch.Tensor
        The union of the client sets, grouped by class (class 0 first).
    weights : torch.Tensor
        float32 per-image loss weights (mean 1).
    real_counts : torch.Tensor
        Real samples per class summed over the contributing clients.
    node_ids : list[int]
        Clients whose sets are in the union.
    """

    images: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    real_counts: torch.Tensor
    node_ids: list[int]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _content_digest(client_set: ClientSet) -> bytes:
    """A key that orders client sets by what they hold, not by who or when."""
    digest = hashlib.sha256()
    for tensor in (client_set.synthetic.images, client_set.synthetic.labels, client_set.class_counts):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()


def aggregate_sets(sets: Sequence[ClientSet], *, num_classes: int) -> AggregatedSet:
    """Concatenate the sets per class, in a canonical client order, and derive class-count weights.

    Raises
    ------
    ValueError
        When ``sets`` is empty or holds no image at all.
    """
    if not sets:
        raise ValueError("no client set to aggregate")
    sets = sorted(sets, key=_content_digest)
    # multi-formation sets train on their decoded tiles; weights spread over the tiles
    decoded = [s.synthetic.decoded() for s in sets]
    real_counts = torch.stack([s.class_counts for s in sets]).sum(0)
    total_real = int(real_counts.sum())
    total_images = sum(len(d) for d in decoded)
    if total_images == 0 or total_real == 0:
        raise ValueError("the client sets hold no images")
    images, labels, weights = [], [], []
    for c in range(num_classes):
        for s, d in zip(sets, decoded, strict=True):
            mask = d.labels == c
            m = int(mask.sum())
            if m == 0:
                continue
            images.append(d.images[mask])
            labels.append(d.labels[mask])
            weights.append(torch.full((m,), float(s.class_counts[c]) / m * total_images / total_real))
    return AggregatedSet(
        torch.cat(images),
        torch.cat(labels),
        torch.cat(weights).float(),
        real_counts,
        [s.node_id for s in sets],
    )
