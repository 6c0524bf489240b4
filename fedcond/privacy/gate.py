"""The release gate: a client tests its synthetic set against its own data before any upload.

The statistic is the recoverability audit's (:mod:`fedcond.privacy.recoverability`): a
synthetic image is a *near-copy* when its nearest real training image is closer than the
``threshold_rank``-th smallest distance at which genuinely distinct real images of the same
distribution sit from the training data. An exact copy (distance 0) always counts. Both the
pixel space and the feature space of a fixed random ConvNet are tested (the audit's two
spaces; the feature space is scale-blind and catches rescaled copies); an image flagged in
either space is flagged.

Calibration. The audit calibrates on a held-out split. A federated client often holds a few
dozen images per class (Dirichlet 0.1), too few to give up a held-out slice of the hundred
images a 1% threshold needs, so the gate calibrates *leave-one-out*: each calibration image's
distance to its nearest *other* training image. That is the held-out statistic computed with
every image in turn held out; with one image fewer in the reference, the distances are slightly
larger, so the threshold errs towards flagging. The client's data is deduplicated first: an
exact duplicate's twin would give a leave-one-out distance of 0, which is no evidence of how
close *distinct* images come. With fewer
calibration images than ``1 / quantile`` the rank is 1: "closer than any two of the client's own
images are to each other".

Multi-formation sets (``factor`` f > 1) store f x f downsampled tiles per image, and a network
trains on the tiles upsampled again. A tile that copies a training image lost that image's fine
detail, so at full resolution it can sit as far from its original as distinct images sit from
each other. The gate therefore also compares decoded tiles with the client's images passed
through the same round trip (:func:`~fedcond.distill.formation.formation_round_trip`), with
thresholds calibrated leave-one-out on those round-tripped images; a tile flagged in either
comparison is flagged.

The gate runs on non-DP sets only. Its decision depends on the raw data outside any privacy
accountant, so applying it to a DP-DM set (and reporting what it flagged) would release
information the (epsilon, delta) guarantee does not cover; a DP set's protection is its noise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from fedcond.data.registry import DatasetSpec
from fedcond.distill.formation import formation_round_trip
from fedcond.distill.synthetic import SyntheticSet
from fedcond.models import get_model
from fedcond.privacy.recoverability import nearest_neighbours, threshold_rank

__all__ = ["GateResult", "ReleaseGate"]

#: Calibration images drawn from the client's data (the cost is ``calibration x n`` distances).
MAX_CALIBRATION = 2000


@dataclass(frozen=True)
class GateResult:
    """One test of a synthetic set.

    Attributes
    ----------
    flagged : torch.Tensor
        bool, one entry per stored synthetic image: a near-copy in at least one space.
    thresholds : dict[str, float]
        The near-copy distance per space.
    distances : dict[str, torch.Tensor]
        Each stored image's distance to its nearest training image, per space (the smallest
        over its tiles for a multi-formation set).
    calibration_size, threshold_rank : int
        Leave-one-out calibration images and the order statistic used as the threshold.
    seconds : float
        Time of this test (the calibration is timed in :attr:`ReleaseGate.setup_seconds`).
    """

    flagged: torch.Tensor
    thresholds: dict[str, float]
    distances: dict[str, torch.Tensor]
    calibration_size: int
    threshold_rank: int
    seconds: float

    @property
    def flagged_count(self) -> int:
        """Stored images flagged as near-copies."""
        return int(self.flagged.sum())

    @property
    def passed(self) -> bool:
        """No image flagged."""
        return self.flagged_count == 0


class ReleaseGate:
    """Near-copy test of synthetic sets against one client's training images.

    Parameters
    ----------
    real : torch.Tensor
        The client's training images ``N x C x H x W`` (normalised), ``N >= 2``.
    spec : DatasetSpec
        The dataset (builds the feature network).
    quantile : float
        Fresh-sample false-positive rate of the threshold (rank ``max(1, floor(q (n + 1)))``).
    feature_space : bool
        Also test in the embedding space of a fixed random ConvNet.
    seed : int
        Seeds the calibration subsample and the feature network.

    Raises
    ------
    ValueError
        For fewer than two real images or a quantile outside (0, 1).
    """

    def __init__(
        self,
        real: torch.Tensor,
        *,
        spec: DatasetSpec,
        quantile: float = 0.01,
        feature_space: bool = True,
        seed: int = 0,
    ) -> None:
        if real.shape[0] < 2:
            raise ValueError(f"the release gate needs at least two real images, got {real.shape[0]}")
        if not 0 < quantile < 1:
            raise ValueError(f"gate quantile must lie in (0, 1), got {quantile}")
        start = time.perf_counter()
        self.quantile = quantile
        generator = torch.Generator().manual_seed(seed)
        self._embed = None
        if feature_space:
            net = get_model("convnet", spec, generator=torch.Generator().manual_seed(seed + 1))
            net.eval()
            self._embed = net.embed
        # distinct images only: an exact duplicate inside the client's data would put a
        # leave-one-out distance of 0 into the calibration (the twin is the same image)
        distinct = torch.unique(real.detach().float().cpu().flatten(1), dim=0).view(-1, *real.shape[1:])
        if distinct.shape[0] < 2:
            raise ValueError("the release gate needs at least two distinct real images")
        self._distinct = distinct
        self._calibration = torch.randperm(distinct.shape[0], generator=generator)[:MAX_CALIBRATION]
        #: per multi-formation factor: the reference images per space and their thresholds
        self._references: dict[int, tuple[dict[str, torch.Tensor], dict[str, float]]] = {}
        self._real, self.thresholds = self._reference(1)
        self.threshold_rank = threshold_rank(max(1, self.calibration_size), quantile=quantile)
        self.setup_seconds = time.perf_counter() - start

    def _reference(self, factor: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The client's distinct images as a set of ``factor`` shows them, per space, with the
        leave-one-out near-copy thresholds calibrated on them (computed once per factor)."""
        if factor in self._references:
            return self._references[factor]
        pixels = formation_round_trip(self._distinct, factor=factor)
        reference = {"pixel": pixels}
        if self._embed is not None:
            reference["feature"] = self._features(pixels)
        calibration = self._calibration
        thresholds: dict[str, float] = {}
        sizes = []
        for space, images in reference.items():
            loo = nearest_neighbours(images[calibration], images, exclude=calibration).distances
            loo = loo[loo > 0]  # distinct images that share a feature vector calibrate nothing
            sizes.append(int(loo.numel()))
            if loo.numel() == 0:
                thresholds[space] = 0.0  # only exact copies count
                continue
            rank = threshold_rank(int(loo.numel()), quantile=self.quantile)
            thresholds[space] = float(loo.double().sort().values[rank - 1])
        if factor == 1:
            self.calibration_size = min(sizes)
        self._references[factor] = (reference, thresholds)
        return reference, thresholds

    def _features(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        embed = self._embed
        if embed is None:
            raise RuntimeError("this gate tests pixel space only")
        with torch.inference_mode():
            return torch.cat([embed(images[i : i + batch_size]).float() for i in range(0, len(images), batch_size)])

    def test(self, synthetic: SyntheticSet) -> GateResult:
        """Flag the stored images of ``synthetic`` that are near-copies of the client's images.

        A multi-formation set is tested as the images a network trains on (its decoded
        tiles), against the client's images at full resolution and as a tile of the set's
        factor shows them (thresholds of the factor's own calibration; the module docstring
        says why); a stored image is flagged when any of its tiles is, in any space.
        ``distances`` and ``thresholds`` report the full-resolution comparison, and for a
        multi-formation set also the round-tripped one (spaces suffixed ``@factorF``).
        """
        start = time.perf_counter()
        decoded = synthetic.decoded()
        tiles = decoded.images.detach().float().cpu()
        per_stored = max(1, len(decoded) // max(1, len(synthetic)))
        queries = {"pixel": tiles}
        if self._embed is not None:
            queries["feature"] = self._features(tiles)
        comparisons = {1: self._reference(1)}
        if synthetic.factor > 1:
            comparisons[synthetic.factor] = self._reference(synthetic.factor)
        flagged = torch.zeros(len(synthetic), dtype=torch.bool)
        distances: dict[str, torch.Tensor] = {}
        thresholds: dict[str, float] = {}
        for factor, (reference, limits) in comparisons.items():
            for space, query in queries.items():
                d = nearest_neighbours(query, reference[space]).distances
                near = (d < limits[space]) | (d == 0)
                flagged |= near.view(len(synthetic), per_stored).any(1)
                name = space if factor == 1 else f"{space}@factor{factor}"
                distances[name] = d.view(len(synthetic), per_stored).min(1).values
                thresholds[name] = limits[space]
        return GateResult(
            flagged=flagged,
            thresholds=thresholds,
            distances=distances,
            calibration_size=self.calibration_size,
            threshold_rank=self.threshold_rank,
            seconds=time.perf_counter() - start,
        )
