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

The gate runs on non-DP sets only. Its decision depends on the raw data outside any privacy
accountant, so applying it to a DP-DM set (and reporting what it flagged) would release
information the (epsilon, delta) guarantee does not cover; a DP set's protection is its noise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from fedcond.data.registry import DatasetSpec
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
        self._real = {"pixel": distinct}
        if self._embed is not None:
            self._real["feature"] = self._features(self._real["pixel"])
        calibration = torch.randperm(distinct.shape[0], generator=generator)[:MAX_CALIBRATION]
        self.thresholds: dict[str, float] = {}
        sizes = []
        for space, reference in self._real.items():
            loo = nearest_neighbours(reference[calibration], reference, exclude=calibration).distances
            loo = loo[loo > 0]  # distinct images that share a feature vector calibrate nothing
            sizes.append(int(loo.numel()))
            if loo.numel() == 0:
                self.thresholds[space] = 0.0  # only exact copies count
                continue
            rank = threshold_rank(int(loo.numel()), quantile=quantile)
            self.thresholds[space] = float(loo.double().sort().values[rank - 1])
        self.calibration_size = min(sizes)
        self.threshold_rank = threshold_rank(max(1, self.calibration_size), quantile=quantile)
        self.setup_seconds = time.perf_counter() - start

    def _features(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        embed = self._embed
        if embed is None:
            raise RuntimeError("this gate tests pixel space only")
        with torch.inference_mode():
            return torch.cat([embed(images[i : i + batch_size]).float() for i in range(0, len(images), batch_size)])

    def test(self, synthetic: SyntheticSet) -> GateResult:
        """Flag the stored images of ``synthetic`` that are near-copies of the client's images.

        A multi-formation set is tested as the images a network trains on (its decoded
        tiles); a stored image is flagged when any of its tiles is.
        """
        start = time.perf_counter()
        decoded = synthetic.decoded()
        tiles = decoded.images.detach().float().cpu()
        per_stored = max(1, len(decoded) // max(1, len(synthetic)))
        queries = {"pixel": tiles}
        if self._embed is not None:
            queries["feature"] = self._features(tiles)
        flagged = torch.zeros(len(synthetic), dtype=torch.bool)
        distances: dict[str, torch.Tensor] = {}
        for space, query in queries.items():
            d = nearest_neighbours(query, self._real[space]).distances
            near = (d < self.thresholds[space]) | (d == 0)
            flagged |= near.view(len(synthetic), per_stored).any(1)
            distances[space] = d.view(len(synthetic), per_stored).min(1).values
        return GateResult(
            flagged=flagged,
            thresholds=dict(self.thresholds),
            distances=distances,
            calibration_size=self.calibration_size,
            threshold_rank=self.threshold_rank,
            seconds=time.perf_counter() - start,
        )
