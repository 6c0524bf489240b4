"""Differentially private distribution matching: the DP ``RealStatistics`` for the DM engine.

The mechanism, per DM iteration:

1. **Poisson sampling.** Every real image is in the iteration's batch independently with
   probability ``q`` (one rate for all classes).
2. **Per-sample clipping.** The embedding network is freshly random (data independent) and
   normalises per instance, and the siamese augmentation draws one parameter set per class from
   public randomness (``augmentation_per_class``), so each sample's embedding depends on that
   sample alone. Each
   embedding ``e`` (dimension ``D``) is put on a size-independent scale, ``e / sqrt(D)`` (its
   root-mean-square coordinate, a public rescaling), and clipped to L2 norm ``<= C``.
3. **Gaussian noise** ``N(0, sigma^2 C^2 I)`` is added to each class's *sum* of clipped
   embeddings; the noisy sum is divided by the expected batch size ``q * n_c`` and scaled back
   by ``sqrt(D)``.

Adding or removing one image changes exactly one class's sum by at most ``C`` in L2, so the
concatenation of all classes' sums has sensitivity ``C``: one iteration is one
Poisson-subsampled Gaussian mechanism with noise multiplier ``sigma`` and rate ``q``, and the run
is its ``iterations``-fold composition. ``sigma`` is calibrated with Opacus
(:func:`fedcond.privacy.accounting.calibrate_noise_multiplier`) so the whole run spends at most
the requested ``(epsilon, delta)``. Class counts ``n_c`` are treated as public (see
``docs/privacy.md``). Everything after the noisy sums (the synthetic-image updates) is
post-processing.

The Poisson masks and the noise come from the mechanism's own **private** generator, never from
the run's public seed (which the set's metadata publishes: noise that anyone can regenerate
protects nothing). By default it is seeded from the operating system's entropy (``secrets``)
for every run; ``DPConfig.noise_seed`` seeds it explicitly for reproducible research runs.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedcond.config import DPConfig
from fedcond.distill.statistics import RealBatch
from fedcond.privacy.accounting import (
    PrivacyAccountant,
    PrivacyBudgetError,
    calibrate_noise_multiplier,
    check_budget,
)

__all__ = [
    "DPMeanStatistics",
    "DPPlan",
    "clip_embeddings",
    "derive_noise_seed",
    "noisy_class_sums",
    "plan_dp",
    "poisson_sample",
    "private_generator",
    "sample_rate_for",
]

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- pure functions
def clip_embeddings(embeddings: torch.Tensor, *, max_norm: float) -> torch.Tensor:
    """Scale each row of ``embeddings`` down to L2 norm ``<= max_norm`` (float32 copy)."""
    if max_norm <= 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    emb = embeddings.float()
    norms = emb.norm(dim=1, keepdim=True)
    factor = (max_norm / norms.clamp_min(1e-12)).clamp(max=1.0)
    return emb * factor


def poisson_sample(
    class_pools: list[torch.Tensor], *, sample_rate: float, generator: torch.Generator
) -> RealBatch:
    """Keep every index of every class pool independently with probability ``sample_rate``.

    The generator consumes one uniform draw per real image, a data-independent amount given
    the (public) class counts. Returns the indices grouped and sorted by class.
    """
    indices: list[torch.Tensor] = []
    groups: list[torch.Tensor] = []
    for c, pool in enumerate(class_pools):
        if pool.numel() == 0:
            continue
        keep = torch.rand(pool.numel(), generator=generator) < sample_rate
        chosen = pool[keep]
        indices.append(chosen)
        groups.append(torch.full((chosen.numel(),), c, dtype=torch.long))
    if not indices:
        return RealBatch(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    return RealBatch(torch.cat(indices), torch.cat(groups))


def noisy_class_sums(
    embeddings: torch.Tensor,
    groups: torch.Tensor,
    *,
    num_classes: int,
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Per-class sums of clipped embeddings plus ``N(0, (noise_multiplier * clip_norm)^2)`` noise.

    Returns a float32 ``num_classes x D`` tensor on the embeddings' device. The noise is drawn
    on CPU from ``generator`` (so runs are reproducible across devices).
    """
    clipped = clip_embeddings(embeddings, max_norm=clip_norm)
    sums = torch.zeros(num_classes, clipped.shape[1], device=clipped.device).index_add_(
        0, groups.to(clipped.device), clipped
    )
    noise = torch.randn(sums.shape, generator=generator) * (noise_multiplier * clip_norm)
    return sums + noise.to(sums.device)


def sample_rate_for(*, batch_real: int, class_counts: torch.Tensor) -> float:
    """Default Poisson rate: ``batch_real / smallest non-empty class``, capped at 1.

    Every class then gets at least ``batch_real`` real images per iteration in expectation.
    """
    counts = [int(n) for n in class_counts.tolist() if int(n) > 0]
    if not counts:
        raise ValueError("no class holds any real image: nothing to condense under DP")
    return min(1.0, batch_real / min(counts))


def private_generator(noise_seed: int | None = None) -> torch.Generator:
    """The generator of a DP run's private randomness (Poisson masks and Gaussian noise).

    ``noise_seed=None`` seeds it with 63 bits from the operating system's CSPRNG
    (:mod:`secrets`), fresh for every call; an ``int`` seeds it reproducibly.
    """
    if noise_seed is not None and noise_seed < 0:
        raise PrivacyBudgetError(f"dp.noise_seed must be >= 0, got {noise_seed}")
    seed = secrets.randbits(63) if noise_seed is None else noise_seed
    return torch.Generator().manual_seed(seed)


def derive_noise_seed(noise_seed: int | None, *parts: int) -> int | None:
    """An independent noise seed for one ``(client, round, ...)`` of a run seeded with ``noise_seed``.

    Clients sharing one configured seed must not share noise: two releases with the same noise
    differ by the difference of their clipped sums, noise-free. ``None`` (secret noise) stays
    ``None``. Uses NumPy's ``SeedSequence``, so nearby inputs give unrelated seeds.
    """
    if noise_seed is None:
        return None
    state = np.random.SeedSequence([noise_seed, *parts]).generate_state(2, dtype=np.uint64)
    return int(state[0]) & (2**63 - 1)


# ----------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class DPPlan:
    """A calibrated DP-DM run: the mechanism's parameters and the budget they meet."""

    epsilon: float
    delta: float
    sample_rate: float
    noise_multiplier: float
    clip_norm: float
    steps: int
    accountant: str

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values."""
        return dict(self.__dict__)


def plan_dp(config: DPConfig, *, iterations: int, batch_real: int, class_counts: torch.Tensor) -> DPPlan:
    """Calibrate sigma for ``iterations`` steps of ``config``'s mechanism.

    ``config`` checked its own ranges (epsilon, delta, clip norm, sample rate, accountant) when
    it was built; :func:`~fedcond.privacy.accounting.check_budget` guards the accountant's own
    contract.

    Raises
    ------
    PrivacyBudgetError
        For a budget the accountant cannot meet, or a ``delta`` of at least 1/N for the N real
        images of ``class_counts`` (such a delta allows a mechanism that publishes one record
        outright, so the pair guarantees nothing).
    """
    check_budget(epsilon=config.epsilon, delta=config.delta)
    records = int(torch.as_tensor(class_counts).sum())
    if records > 0 and config.delta >= 1 / records:
        raise PrivacyBudgetError(
            f"DP delta {config.delta:g} is at least 1/N for the N={records} real images: the guarantee would "
            f"allow publishing one image outright; choose delta well below {1 / records:.2g} (1e-5 is usual)"
        )
    q = config.sample_rate or sample_rate_for(batch_real=batch_real, class_counts=class_counts)
    sigma = calibrate_noise_multiplier(
        epsilon=config.epsilon, delta=config.delta, sample_rate=q, steps=iterations, accountant=config.accountant
    )
    return DPPlan(config.epsilon, config.delta, q, sigma, config.clip_norm, iterations, config.accountant)


# ----------------------------------------------------------------------------- stateful seam
class DPMeanStatistics:
    """DP implementation of ``fedcond.distill.statistics.RealStatistics``.

    Parameters
    ----------
    plan : DPPlan
        Sampling rate, noise multiplier, clip norm and the number of steps it was calibrated for.
    class_counts : torch.Tensor
        Real images per class (public; the normaliser is ``q * n_c``).
    accountant : PrivacyAccountant | None
        Receives one step per call of :meth:`class_means`; a new one when ``None``.
    noise_seed : int | None
        Seed of the private generator that draws the Poisson masks and the noise
        (:func:`private_generator`); ``None``, the default, is a fresh secret seed. The DM
        engine's own (public, seeded) generator is never used for either.
    max_steps : int | None
        Releases this object may make (``plan.steps`` when ``None``). A multi-round plan is
        calibrated for ``rounds x iterations`` steps but each run gets its own object, limited
        to one run's iterations, so that a run's certificate
        (:class:`~fedcond.privacy.private_condensation.PrivateCondensation`, which accounts one
        run) covers every release the object made.

    Raises
    ------
    PrivacyBudgetError
        From :meth:`class_means` when called more often than ``max_steps``: the budget was
        calibrated for that many iterations and would otherwise be exceeded.
    """

    def __init__(
        self,
        plan: DPPlan,
        *,
        class_counts: torch.Tensor,
        accountant: PrivacyAccountant | None = None,
        noise_seed: int | None = None,
        max_steps: int | None = None,
    ) -> None:
        if max_steps is not None and not 1 <= max_steps <= plan.steps:
            raise PrivacyBudgetError(f"max_steps must lie in 1..{plan.steps} (the plan's steps), got {max_steps}")
        self.plan = plan
        self.max_steps = plan.steps if max_steps is None else max_steps
        self.expected_counts = class_counts.float() * plan.sample_rate
        # per-sample augmentation would make an image's transform depend on its rank in the
        # Poisson batch (i.e. on the other images sampled) and break the sensitivity bound
        self.augmentation_per_class = True
        # the noisy class means are all the mechanism releases: no raw embedding may be matched
        self.means_only = True
        self.accountant = accountant or PrivacyAccountant(plan.accountant)
        self.noise_seed = noise_seed
        self._private = private_generator(noise_seed)

    @property
    def noise(self) -> str:
        """``"secret"`` (OS-seeded private randomness) or ``"seeded"`` (``noise_seed`` given)."""
        return "secret" if self.noise_seed is None else "seeded"

    @property
    def steps(self) -> int:
        """Noisy releases of the class means accounted so far."""
        return self.accountant.steps

    def sample_batch(self, class_pools: list[torch.Tensor], *, generator: torch.Generator) -> RealBatch:
        """A Poisson sample of every class pool at the plan's sample rate (the amplified batch).

        The mask comes from the private generator; ``generator`` (the engine's public one) is
        not used: amplification by subsampling assumes nobody can tell which images were drawn.
        """
        return poisson_sample(class_pools, sample_rate=self.plan.sample_rate, generator=self._private)

    def class_means(
        self, embeddings: torch.Tensor, groups: torch.Tensor, *, num_classes: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Noisy per-class mean embeddings: clipped per-sample sums plus Gaussian noise.

        Each call is one accounted step. The noise comes from the private generator, not from
        ``generator``.

        Raises
        ------
        PrivacyBudgetError
            Once the calibrated number of steps is spent.
        """
        if self.steps >= self.max_steps:
            raise PrivacyBudgetError(
                f"this DP mechanism (epsilon={self.plan.epsilon}, delta={self.plan.delta}) may make "
                f"{self.max_steps} releases and all are spent; a new condensation needs a new "
                "PrivateCondensation (with the earlier runs' accountant state) or a new budget"
            )
        dim = embeddings.shape[1]
        scale = math.sqrt(dim)
        sums = noisy_class_sums(
            embeddings.float() / scale,
            groups,
            num_classes=num_classes,
            clip_norm=self.plan.clip_norm,
            noise_multiplier=self.plan.noise_multiplier,
            generator=self._private,
        )
        self.accountant.step(noise_multiplier=self.plan.noise_multiplier, sample_rate=self.plan.sample_rate)
        expected = self.expected_counts.to(sums.device)
        if expected.numel() < num_classes:
            expected = torch.cat([expected, torch.zeros(num_classes - expected.numel(), device=sums.device)])
        return sums / expected[:num_classes].clamp_min(1e-12).unsqueeze(1) * scale

    def fingerprint(self) -> dict[str, object]:
        """The DP plan, so a checkpoint of another plan (or a non-private one) is never resumed.

        A seeded run adds its ``noise_seed`` (the checkpoint stays on the data owner's disk).
        """
        noise: dict[str, object] = {"noise": self.noise}
        if self.noise_seed is not None:
            noise["noise_seed"] = self.noise_seed
        return {"kind": "dp-mean", **self.plan.as_dict(), **noise}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a DM checkpoint keeps so that a resumed run never draws the same noise twice.

        A seeded run keeps its private generator's state: resuming from the seed would replay
        the noise of the first iterations on later ones, which breaks the composition the
        accountant assumes. A secret run keeps nothing (the state would reveal the noise to
        whoever reads the checkpoint); its resumed part draws from a fresh secret seed.
        """
        if self.noise_seed is None:
            return {}
        return {"private_generator": self._private.get_state()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` when a DM run resumes from a checkpoint.

        Raises
        ------
        ValueError
            For a seeded run whose checkpoint lacks the private generator's state.
        """
        if self.noise_seed is None:
            logger.info("DP-DM resumed: the remaining iterations draw from a fresh secret seed")
            return
        if "private_generator" not in state:
            raise ValueError(
                "the checkpoint does not hold the DP noise generator's state; resuming a seeded DP run "
                "without it would draw the same noise twice. Start the run afresh"
            )
        try:
            self._private.set_state(torch.as_tensor(state["private_generator"], dtype=torch.uint8))
        except RuntimeError as exc:
            raise ValueError(f"the checkpoint's DP noise generator state is corrupted: {exc}") from exc

    def epsilon(self) -> float:
        """Epsilon spent so far by this object's iterations at the plan's delta."""
        return self.accountant.epsilon(delta=self.plan.delta)
