"""What a client does between condensing and uploading: the release gate and its action.

:func:`gate_release` tests a synthetic set against the client's own training images
(:class:`fedcond.privacy.gate.ReleaseGate`) and applies the policy's action to flagged images:

- ``withhold``: flagged images are left out of the upload;
- ``replace``: each flagged image is reset to noise and the set is condensed again from that
  start (the caller's ``recondense``), then tested again; images still flagged are withheld;
- ``refuse``: nothing is uploaded (:class:`~fedcond.federated.policy.PolicyViolation` on rule
  ``gate``).

Near-copies come mostly from classes a client holds few images of: matching the mean embedding
of three images with ten synthetic ones reproduces them, from noise as from real images. A
re-condensation from noise converges back towards the same images, so ``withhold`` is the
default (docs/client-policy.md has the measurements).

The returned :class:`GateReport` goes into the reply's metrics and the server's
``metrics.json``. Raw data never leaves this module: it returns a set and numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedcond.data.registry import ArrayDataset
from fedcond.distill.synthetic import SyntheticSet
from fedcond.federated.policy import GatePolicy, PolicyViolation
from fedcond.privacy.gate import ReleaseGate

__all__ = ["GateReport", "gate_release"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateReport:
    """The gate's outcome for one upload.

    Attributes
    ----------
    flagged : int
        Images flagged as near-copies in the first test.
    replaced : int
        Flagged images re-condensed from noise (``replace`` action).
    withheld : int
        Images left out of the upload (flagged, after the re-condensation for ``replace``).
    uploaded : int
        Images in the upload.
    seconds : float
        Time spent in the gate (calibration and tests; a re-condensation is not included).
    recondense_seconds : float
        Time of the re-condensation, when one ran.
    threshold_pixel : float
        The pixel-space near-copy distance.
    """

    flagged: int
    replaced: int
    withheld: int
    uploaded: int
    seconds: float
    recondense_seconds: float
    threshold_pixel: float

    def metrics(self) -> dict[str, float | int]:
        """As ``MetricRecord`` entries (``gate-*`` keys)."""
        return {
            "gate-flagged": self.flagged,
            "gate-replaced": self.replaced,
            "gate-withheld": self.withheld,
            "gate-uploaded": self.uploaded,
            "gate-seconds": self.seconds,
            "gate-recondense-seconds": self.recondense_seconds,
            "gate-threshold-pixel": self.threshold_pixel,
        }


def _keep(synthetic: SyntheticSet, keep: torch.Tensor) -> SyntheticSet:
    return SyntheticSet(synthetic.images[keep].clone(), synthetic.labels[keep].clone(), dict(synthetic.meta))


def gate_release(
    synthetic: SyntheticSet,
    data: ArrayDataset,
    *,
    policy: GatePolicy,
    recondense: Callable[[torch.Tensor], SyntheticSet],
    seed: int,
) -> tuple[SyntheticSet, GateReport]:
    """Test ``synthetic`` against ``data`` and apply ``policy.action``.

    Parameters
    ----------
    synthetic : SyntheticSet
        The condensed set, about to be uploaded.
    data : ArrayDataset
        The client's own training data (the members the set was condensed from).
    policy : GatePolicy
        Quantile, spaces and action.
    recondense : callable
        Condenses again from the given start images (same count and label order as
        ``synthetic``); used by the ``replace`` action.
    seed : int
        Seeds the gate's calibration subsample, feature network and the replacement noise.

    Returns
    -------
    (SyntheticSet, GateReport)
        The set to upload and the gate's report.

    Raises
    ------
    PolicyViolation
        Rule ``gate``: the ``refuse`` action met a flagged image, or every image was withheld.
    """
    start = time.perf_counter()
    gate = ReleaseGate(
        data.images, spec=data.spec, quantile=policy.quantile, feature_space=policy.feature_space, seed=seed
    )
    first = gate.test(synthetic)
    recondense_seconds = 0.0
    replaced = 0
    final = first
    if not first.passed and policy.action != "withhold":
        if policy.action == "refuse":
            raise PolicyViolation(
                "gate",
                f"{first.flagged_count} of {len(synthetic)} synthetic images are near-copies of this node's "
                "training images; the upload is refused",
            )
        generator = torch.Generator().manual_seed(seed + 7)
        restart = synthetic.images.detach().clone()
        noise = torch.randn(restart[first.flagged].shape, generator=generator)
        restart[first.flagged] = noise
        replaced = first.flagged_count
        gate_time = time.perf_counter() - start
        t0 = time.perf_counter()
        synthetic = recondense(restart)
        recondense_seconds = time.perf_counter() - t0
        start = time.perf_counter() - gate_time  # the gate's clock excludes the re-condensation
        final = gate.test(synthetic)
    if not final.passed:
        synthetic = _keep(synthetic, ~final.flagged)
    withheld = final.flagged_count
    if len(synthetic) == 0:
        raise PolicyViolation(
            "gate", "every synthetic image is a near-copy of this node's training images; nothing is uploaded"
        )
    report = GateReport(
        flagged=first.flagged_count,
        replaced=replaced,
        withheld=withheld,
        uploaded=len(synthetic),
        seconds=time.perf_counter() - start,
        recondense_seconds=recondense_seconds,
        threshold_pixel=first.thresholds["pixel"],
    )
    if report.flagged:
        logger.warning(
            "release gate: %d of %d images were near-copies of local training images "
            "(%s: %d re-condensed, %d withheld)",
            report.flagged, len(first.flagged), policy.action, report.replaced, report.withheld,
        )
    return synthetic, report
