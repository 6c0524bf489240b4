"""Recoverability (memorisation) audit: are synthetic images near-copies of training images?

For every synthetic image we find its nearest real *training* image (a member: the data the
set was condensed from) and its nearest real *held-out* image (a non-member from the same
distribution), in pixel space and in the feature space of a network.

Calibration. The held-out data is split in two disjoint halves: a *calibration* half and a
*reference* half. The threshold ``tau`` is the ``r``-th smallest of the ``n`` calibration images'
distances to their nearest training image, with ``r = max(1, floor(q (n + 1)))``: a fresh image
from the data distribution lands closer than ``tau`` to some training image with probability
``r / (n + 1) <= q`` on average (default ``q`` 1%). Because ``tau`` is itself estimated from
``n`` samples, the number of fresh images under it out of ``m`` is not Binomial(m, q) but
BetaBinomial(m, r, n + 1 - r) (the conformal / order-statistic result), which is what
:func:`match_count_pvalue` tests against. Then

* ``nn_match_rate`` = share of synthetic images whose nearest training image is closer than
  ``tau`` (an exact copy, distance 0, always counts). Expected ``~r / (n + 1)`` when nothing is
  memorised.
* ``nn_distance_ratio`` = median distance to the nearest member / median distance to the
  nearest non-member (reference half). ``nn_distance_ratio_fresh`` is the same ratio for the
  calibration images themselves, i.e. what a set of fresh samples scores; a ratio well below
  it means the synthetic images sit closer to the training data than fresh samples do.
* ``nn_ratio_pvalue``: one-sided Mann-Whitney test that the per-image ratios
  ``d(train) / d(held-out)`` of the synthetic images are smaller than those of the calibration
  images (fresh samples). It catches images that drifted away from a training image they
  started from, yet stay closer to it than fresh samples would.

Like torchmetrics, the audit exists as a function (:func:`recoverability`) and as a class
(:class:`Recoverability`) that accumulates synthetic images batch by batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = [
    "CalibrationError",
    "NearestNeighbours",
    "Recoverability",
    "RecoverabilityResult",
    "SpaceResult",
    "calibrate_threshold",
    "match_count_pvalue",
    "min_calibration_samples",
    "nearest_neighbours",
    "threshold_rank",
    "recoverability",
    "split_held_out",
]

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


class CalibrationError(ValueError):
    """Too few held-out samples to calibrate the threshold."""



@dataclass(frozen=True)
class NearestNeighbours:
    """Distance to and index of each query's nearest reference row."""

    distances: torch.Tensor
    indices: torch.Tensor


def _flat(x: torch.Tensor) -> torch.Tensor:
    # flatten(1), not reshape(n, -1): an empty set keeps its row length instead of failing
    return x.detach().float().flatten(1).cpu()


def nearest_neighbours(
    query: torch.Tensor,
    reference: torch.Tensor,
    *,
    batch_size: int = 512,
    exclude: torch.Tensor | None = None,
) -> NearestNeighbours:
    """Euclidean nearest neighbour of each query row among the reference rows (batched).

    ``exclude`` (one reference index per query row) leaves that row out of the query's search:
    with ``query = reference[idx]`` and ``exclude = idx`` each row's nearest *other* row, the
    leave-one-out distance.
    """
    q, r = _flat(query), _flat(reference)
    if r.shape[0] == 0:
        raise ValueError("the reference set is empty")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query rows have {q.shape[1]} values, reference rows {r.shape[1]}")
    if exclude is not None:
        if exclude.shape != (q.shape[0],):
            raise ValueError(f"exclude needs one index per query row ({q.shape[0]}), got shape {tuple(exclude.shape)}")
        if r.shape[0] < 2:
            raise ValueError("leave-one-out needs at least two reference rows")
    r_sq = (r * r).sum(1)
    dists, idxs = [], []
    for start in range(0, q.shape[0], batch_size):
        qb = q[start : start + batch_size]
        d2 = (qb * qb).sum(1, keepdim=True) - 2 * qb @ r.T + r_sq
        if exclude is not None:
            d2[torch.arange(qb.shape[0]), exclude[start : start + batch_size]] = float("inf")
        i = d2.argmin(1)
        dists.append((qb - r[i]).norm(dim=1))  # exact distance to the chosen row (0 for copies)
        idxs.append(i)
    if not dists:
        return NearestNeighbours(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    return NearestNeighbours(torch.cat(dists), torch.cat(idxs))


def min_calibration_samples(quantile: float) -> int:
    """Held-out images needed so that the ``quantile`` threshold rests on >= 1 expected sample.

    Raises
    ------
    ValueError
        If ``quantile`` is not in (0, 1).
    """
    if not 0 < quantile < 1:
        raise ValueError(f"calibration quantile must lie in (0, 1), got {quantile}")
    return max(20, math.ceil(1.0 / quantile))


def threshold_rank(num_calibration: int, *, quantile: float) -> int:
    """The order statistic ``r = max(1, floor(quantile * (n + 1)))`` used as the threshold.

    A fresh sample falls below the ``r``-th smallest of ``n`` exchangeable calibration values
    with probability ``r / (n + 1)``, which never exceeds ``quantile`` once ``n`` reaches
    :func:`min_calibration_samples`.
    """
    return max(1, math.floor(quantile * (num_calibration + 1)))


def calibrate_threshold(calibration_distances: torch.Tensor, *, quantile: float) -> float:
    """The :func:`threshold_rank`-th smallest held-out-to-training nearest-neighbour distance.

    An order statistic, not an interpolated quantile: with it the count of fresh samples
    below the threshold has a known distribution (:func:`match_count_pvalue`).

    Raises
    ------
    CalibrationError
        If fewer than :func:`min_calibration_samples` distances are given.
    ValueError
        If ``quantile`` is not in (0, 1).
    """
    need = min_calibration_samples(quantile)  # raises for a quantile outside (0, 1)
    n = calibration_distances.numel()
    if n < need:
        raise CalibrationError(
            f"{n} held-out images for calibration, at least {need} needed "
            f"for the {quantile:g}-quantile threshold (use more held-out data or a larger quantile)"
        )
    rank = threshold_rank(n, quantile=quantile)
    return float(calibration_distances.double().flatten().sort().values[rank - 1])


def match_count_pvalue(matches: int, *, audited: int, calibration: int, rank: int) -> float:
    """One-sided p-value of ``matches`` or more of ``audited`` images under the threshold.

    Under the null hypothesis the audited images are fresh samples of the data distribution,
    exchangeable with the ``calibration`` images whose ``rank``-th smallest distance is the
    threshold; their count below it is then BetaBinomial(audited, rank, calibration + 1 - rank)
    exactly, whatever the distance distribution. (A Binomial(audited, q) test ignores that the
    threshold is estimated and rejects far more often than its level when ``audited`` is large
    next to ``calibration``.)

    Raises
    ------
    ValueError
        If the counts are inconsistent.
    """
    if not 1 <= rank <= calibration:
        raise ValueError(f"threshold rank {rank} outside 1..{calibration}")
    if not 0 <= matches <= audited:
        raise ValueError(f"{matches} matches out of {audited} audited images")
    if matches == 0:
        return 1.0
    from scipy.stats import betabinom

    return float(betabinom.sf(matches - 1, audited, rank, calibration + 1 - rank))


def split_held_out(num: int, *, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random disjoint (calibration, reference) halves of ``range(num)``."""
    order = torch.randperm(num, generator=generator)
    half = num // 2
    return order[:half], order[half:]


@dataclass(frozen=True)
class SpaceResult:
    """The audit in one space (``pixel`` or ``feature``)."""

    space: str
    threshold: float
    nn_match_rate: float
    nn_distance_ratio: float
    nn_distance_ratio_fresh: float
    calibration_match_rate: float
    nn_ratio_pvalue: float
    calibration_size: int
    threshold_rank: int
    to_train: NearestNeighbours
    to_held_out: NearestNeighbours

    @property
    def matches(self) -> int:
        """Synthetic images counted as near-copies in this space."""
        return int(round(self.nn_match_rate * self.to_train.distances.numel()))

    @property
    def match_pvalue(self) -> float:
        """:func:`match_count_pvalue` of this space's match count (1 when nothing was audited)."""
        audited = self.to_train.distances.numel()
        if audited == 0:
            return 1.0
        return match_count_pvalue(
            self.matches, audited=audited, calibration=self.calibration_size, rank=self.threshold_rank
        )

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """This space's numbers as ``metrics.json`` entries, each key prefixed with ``prefix``."""
        return {
            f"{prefix}nn_match_rate": self.nn_match_rate,
            f"{prefix}nn_distance_ratio": self.nn_distance_ratio,
            f"{prefix}nn_distance_ratio_fresh": self.nn_distance_ratio_fresh,
            f"{prefix}nn_ratio_pvalue": self.nn_ratio_pvalue,
            f"{prefix}nn_threshold": self.threshold,
            f"{prefix}nn_threshold_rank": self.threshold_rank,
            f"{prefix}nn_calibration_size": self.calibration_size,
            f"{prefix}nn_match_pvalue": self.match_pvalue,
            f"{prefix}nn_median_distance_train": float(self.to_train.distances.median()),
            f"{prefix}nn_median_distance_held_out": float(self.to_held_out.distances.median()),
        }


@dataclass(frozen=True)
class RecoverabilityResult:
    """Per-space results; ``pixel`` always, ``feature`` when a feature function was given."""

    spaces: dict[str, SpaceResult] = field(default_factory=dict)
    quantile: float = 0.01
    num_synthetic: int = 0
    reference_indices: torch.Tensor | None = None

    @property
    def pixel(self) -> SpaceResult:
        """The result in pixel space (``nn_distance_ratio`` comes from it)."""
        return self.spaces["pixel"]

    @property
    def strongest(self) -> SpaceResult:
        """The space with the highest match rate, the one ``nn_match_rate`` reports (pixel on ties).

        Scale-blind DM losses let synthetic images grow (``matching="mmd"``), and a rescaled
        copy is far away in pixel space but not in the instance-normalised feature space.
        """
        return max(self.spaces.values(), key=lambda s: (s.nn_match_rate, s.space == "pixel"))

    @property
    def nn_match_rate(self) -> float:
        """The larger match rate over the audited spaces (the stronger attack)."""
        return self.strongest.nn_match_rate

    @property
    def nn_distance_ratio(self) -> float:
        """Pixel-space distance ratio."""
        return self.pixel.nn_distance_ratio

    def matches(self) -> int:
        """Synthetic images counted as near-copies in at least one space (the largest count)."""
        return self.strongest.matches

    def metrics(self) -> dict[str, float]:
        """Headline numbers plus every space's, as ``metrics.json`` entries."""
        out: dict[str, float] = {"nn_match_rate": self.nn_match_rate, "nn_distance_ratio": self.nn_distance_ratio}
        for name, space in self.spaces.items():
            out.update(space.metrics(f"{name}_"))
        out["nn_calibration_quantile"] = self.quantile
        return out


def _audit_space(
    name: str,
    synthetic: torch.Tensor,
    train: torch.Tensor,
    calibration: torch.Tensor,
    reference: torch.Tensor,
    *,
    quantile: float,
) -> SpaceResult:
    cal_to_train = nearest_neighbours(calibration, train)
    tau = calibrate_threshold(cal_to_train.distances, quantile=quantile)
    to_train = nearest_neighbours(synthetic, train)
    to_held_out = nearest_neighbours(synthetic, reference)
    cal_to_ref = nearest_neighbours(calibration, reference)

    def match_rate(d: torch.Tensor) -> float:
        return float(((d < tau) | (d == 0)).float().mean()) if d.numel() else float("nan")

    def ratio(a: torch.Tensor, b: torch.Tensor) -> float:
        denom = float(b.median())
        return float(a.median()) / denom if denom > 0 else float("inf")

    from scipy.stats import mannwhitneyu

    syn_ratios = to_train.distances / to_held_out.distances.clamp_min(1e-12)
    fresh_ratios = cal_to_train.distances / cal_to_ref.distances.clamp_min(1e-12)
    pvalue = float(mannwhitneyu(syn_ratios.numpy(), fresh_ratios.numpy(), alternative="less").pvalue)

    return SpaceResult(
        space=name,
        threshold=tau,
        nn_match_rate=match_rate(to_train.distances),
        nn_distance_ratio=ratio(to_train.distances, to_held_out.distances),
        nn_distance_ratio_fresh=ratio(cal_to_train.distances, cal_to_ref.distances),
        calibration_match_rate=match_rate(cal_to_train.distances),
        nn_ratio_pvalue=pvalue,
        calibration_size=int(cal_to_train.distances.numel()),
        threshold_rank=threshold_rank(int(cal_to_train.distances.numel()), quantile=quantile),
        to_train=to_train,
        to_held_out=to_held_out,
    )


def recoverability(
    synthetic: torch.Tensor,
    train: torch.Tensor,
    held_out: torch.Tensor,
    *,
    quantile: float = 0.01,
    features: FeatureFn | None = None,
    generator: torch.Generator | None = None,
) -> RecoverabilityResult:
    """Nearest-neighbour memorisation audit of ``synthetic`` images.

    Parameters
    ----------
    synthetic : torch.Tensor
        ``N x C x H x W`` synthetic images (normalised space).
    train : torch.Tensor
        The members: the real images the set was condensed from.
    held_out : torch.Tensor
        Disjoint real images of the same distribution (e.g. the test split); split into a
        calibration half and a reference half.
    quantile : float
        Fresh-sample false-positive rate of the threshold.
    features : callable | None
        Maps images to feature vectors (e.g. a fixed network's embedding); adds a ``feature``
        space audit.
    generator : torch.Generator | None
        Drives the held-out split (seed 0 when ``None``).

    Raises
    ------
    CalibrationError
        If the calibration half is smaller than :func:`min_calibration_samples`.
    ValueError
        If the image shapes differ.
    """
    if synthetic.shape[1:] != train.shape[1:] or held_out.shape[1:] != train.shape[1:]:
        raise ValueError(
            f"image shapes differ: synthetic {tuple(synthetic.shape[1:])}, train {tuple(train.shape[1:])}, "
            f"held-out {tuple(held_out.shape[1:])}"
        )
    generator = generator or torch.Generator().manual_seed(0)
    cal_idx, ref_idx = split_held_out(held_out.shape[0], generator=generator)
    need = min_calibration_samples(quantile)
    if cal_idx.numel() < need:
        raise CalibrationError(
            f"{held_out.shape[0]} held-out images give a calibration half of {cal_idx.numel()}, at least "
            f"{need} needed for the {quantile:g}-quantile threshold (use more held-out data or a larger quantile)"
        )
    spaces = {
        "pixel": _audit_space(
            "pixel", synthetic, train, held_out[cal_idx], held_out[ref_idx], quantile=quantile
        )
    }
    if features is not None:
        with torch.no_grad():
            f_syn, f_train, f_held = (_embed(features, x) for x in (synthetic, train, held_out))
        spaces["feature"] = _audit_space(
            "feature", f_syn, f_train, f_held[cal_idx], f_held[ref_idx], quantile=quantile
        )
    return RecoverabilityResult(spaces, quantile, int(synthetic.shape[0]), ref_idx)


def _embed(features: FeatureFn, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    return torch.cat([features(images[i : i + batch_size]).float().cpu() for i in range(0, len(images), batch_size)])


class Recoverability:
    """Stateful twin of :func:`recoverability`: ``update`` with synthetic batches, then ``compute``.

    Parameters
    ----------
    train, held_out : torch.Tensor
        Members and non-members, as in :func:`recoverability`.
    quantile, features, seed
        As in :func:`recoverability`.
    """

    def __init__(
        self,
        train: torch.Tensor,
        held_out: torch.Tensor,
        *,
        quantile: float = 0.01,
        features: FeatureFn | None = None,
        seed: int = 0,
    ) -> None:
        self.train = train
        self.held_out = held_out
        self.quantile = quantile
        self.features = features
        self.seed = seed
        self._batches: list[torch.Tensor] = []

    def update(self, synthetic: torch.Tensor) -> None:
        """Add a batch of synthetic images (e.g. one client's set) to the audited pool."""
        self._batches.append(synthetic.detach().cpu())

    def reset(self) -> None:
        """Forget every batch added so far."""
        self._batches = []

    def compute(self) -> RecoverabilityResult:
        """:func:`recoverability` of every batch added since the last :meth:`reset`.

        Raises
        ------
        ValueError
            If no batch was added.
        """
        if not self._batches:
            raise ValueError("no synthetic images given: call update() first")
        return recoverability(
            torch.cat(self._batches),
            self.train,
            self.held_out,
            quantile=self.quantile,
            features=self.features,
            generator=torch.Generator().manual_seed(self.seed),
        )
