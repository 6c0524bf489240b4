"""Seeded k-means in pixel space: DM's ``kmeans`` start point and a distillation-free baseline.

``init="kmeans"`` starts each class's synthetic images at the centroids of ``ipc`` k-means
clusters of that class's real images, so the start already covers the class's modes instead of
``ipc`` arbitrary samples. With ``iterations=0`` the centroids themselves are the synthetic set,
the baseline that tells how much of DM's gain the start point alone gives.

Everything is torch with an explicit :class:`torch.Generator` (k-means++ seeding, restarts), so
runs are reproducible and work on any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["KMeansResult", "kmeans"]


@dataclass(frozen=True)
class KMeansResult:
    """Centroids ``(k, ...)`` (the input's trailing shape), each point's cluster ``(n,)`` and
    the summed squared distance of the points to their centroids (the inertia)."""

    centroids: torch.Tensor
    assignments: torch.Tensor
    inertia: float


def _plus_plus(points: torch.Tensor, *, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with
    probability proportional to its squared distance from the nearest centre so far."""
    n = points.shape[0]
    first = int(torch.randint(0, n, (1,), generator=generator))
    centres = [points[first]]
    nearest = ((points - points[first]) ** 2).sum(dim=1)
    for _ in range(1, k):
        total = float(nearest.sum())
        if total <= 0.0:  # every point coincides with a centre: any pick is as good
            pick = int(torch.randint(0, n, (1,), generator=generator))
        else:
            pick = int(torch.multinomial((nearest / total).cpu(), 1, generator=generator))
        centres.append(points[pick])
        nearest = torch.minimum(nearest, ((points - points[pick]) ** 2).sum(dim=1))
    return torch.stack(centres)


def _lloyd(
    points: torch.Tensor, centroids: torch.Tensor, *, max_iterations: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    assignments = torch.full((points.shape[0],), -1, dtype=torch.long, device=points.device)
    for _ in range(max_iterations):
        distances = torch.cdist(points, centroids).pow(2)
        new = distances.argmin(dim=1)
        if torch.equal(new, assignments):  # converged: distances and assignments are current
            break
        assignments = new
        sums = torch.zeros_like(centroids).index_add_(0, assignments, points)
        counts = torch.bincount(assignments, minlength=centroids.shape[0])
        empty = counts == 0
        if bool(empty.any()):  # re-seed an empty cluster at the point farthest from its centre
            far = distances.gather(1, assignments[:, None]).squeeze(1).argsort(descending=True)
            for slot, j in enumerate(torch.nonzero(empty).flatten().tolist()):
                sums[j] = points[far[slot]]
                counts[j] = 1
        centroids = sums / counts[:, None].to(points.dtype)
    else:  # out of steps: assign to the last centroids
        distances = torch.cdist(points, centroids).pow(2)
        assignments = distances.argmin(dim=1)
    inertia = float(distances.gather(1, assignments[:, None]).sum())
    return centroids, assignments, inertia


def kmeans(
    points: torch.Tensor,
    *,
    k: int,
    generator: torch.Generator,
    restarts: int = 10,
    max_iterations: int = 100,
) -> KMeansResult:
    """Cluster the rows of ``points`` into ``k`` groups; the best of ``restarts`` runs.

    Parameters
    ----------
    points : torch.Tensor
        ``(n, ...)`` samples; trailing dimensions are flattened (images cluster in pixel space)
        and the centroids are returned in the same trailing shape.
    k : int
        Number of clusters, ``1 <= k <= n``.
    generator : torch.Generator
        Source of every random choice (k-means++ seeding of each restart).
    restarts, max_iterations : int
        Independent k-means++ starts (the lowest inertia wins) and Lloyd steps per start.

    Returns
    -------
    KMeansResult

    Raises
    ------
    ValueError
        If ``k`` is out of range, ``points`` is empty or holds NaN/inf.

    Examples
    --------
    >>> import torch
    >>> x = torch.cat([torch.zeros(5, 2), torch.ones(5, 2)])
    >>> result = kmeans(x, k=2, generator=torch.Generator().manual_seed(0))
    >>> sorted(result.centroids[:, 0].tolist())
    [0.0, 1.0]
    """
    n = points.shape[0]
    if n == 0:
        raise ValueError("k-means needs at least one point")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] for {n} points, got {k}")
    if restarts < 1 or max_iterations < 1:
        raise ValueError("restarts and max_iterations must be >= 1")
    if not bool(torch.isfinite(points).all()):
        raise ValueError("k-means input contains NaN or infinite values")
    shape = points.shape[1:]
    flat = points.reshape(n, -1).float()
    best: tuple[torch.Tensor, torch.Tensor, float] | None = None
    for _ in range(restarts):
        start = _plus_plus(flat, k=k, generator=generator)
        run = _lloyd(flat, start, max_iterations=max_iterations)
        if best is None or run[2] < best[2]:
            best = run
    assert best is not None
    centroids, assignments, inertia = best
    return KMeansResult(centroids.reshape(k, *shape).to(points.dtype), assignments, inertia)
