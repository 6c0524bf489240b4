"""DP distribution matching: clipping, Poisson sampling, noise scale, private randomness, checkpoints."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcond.config import AugmentConfig, DistillConfig, DPConfig
from fedcond.data.registry import load_dataset
from fedcond.distill.dm import DistributionMatching
from fedcond.privacy.accounting import PrivacyBudgetError
from fedcond.privacy.dp import (
    DPMeanStatistics,
    DPPlan,
    clip_embeddings,
    noisy_class_sums,
    plan_dp,
    poisson_sample,
    sample_rate_for,
)
from fedcond.privacy.private_condensation import PrivateCondensation


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    scale=st.floats(1e-3, 1e3),
    max_norm=st.floats(1e-2, 10.0),
)
def test_clipping_bound_holds_per_sample(seed: int, scale: float, max_norm: float) -> None:
    emb = torch.randn(64, 32, generator=torch.Generator().manual_seed(seed)) * scale
    clipped = clip_embeddings(emb, max_norm=max_norm)
    norms = clipped.norm(dim=1)
    assert bool((norms <= max_norm * (1 + 1e-5)).all())
    small = emb.norm(dim=1) <= max_norm
    assert torch.allclose(clipped[small], emb[small])  # rows inside the ball are untouched
    # direction is preserved
    cos = torch.nn.functional.cosine_similarity(clipped, emb, dim=1)
    assert bool((cos > 0.9999).all())


def test_noiseless_sums_are_sums_of_clipped_rows() -> None:
    emb = torch.tensor([[3.0, 4.0], [0.3, 0.4], [6.0, 8.0]])
    groups = torch.tensor([0, 0, 1])
    sums = noisy_class_sums(
        emb, groups, num_classes=3, clip_norm=1.0, noise_multiplier=0.0, generator=torch.Generator()
    )
    assert torch.allclose(sums, torch.tensor([[0.6 + 0.3, 0.8 + 0.4], [0.6, 0.8], [0.0, 0.0]]))


def test_noise_has_the_calibrated_scale() -> None:
    emb = torch.zeros(1, 20_000)
    sums = noisy_class_sums(
        emb,
        torch.tensor([0]),
        num_classes=1,
        clip_norm=0.5,
        noise_multiplier=3.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert float(sums.std()) == pytest.approx(1.5, rel=0.03)


def test_poisson_sampling_rate_and_grouping() -> None:
    pools = [torch.arange(0, 4000), torch.arange(4000, 6000), torch.zeros(0, dtype=torch.long)]
    batch = poisson_sample(pools, sample_rate=0.25, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(batch.groups, minlength=3)
    assert counts[0] == pytest.approx(1000, abs=100)
    assert counts[1] == pytest.approx(500, abs=75)
    assert counts[2] == 0
    assert bool((batch.groups[:-1] <= batch.groups[1:]).all())
    assert bool(((batch.indices < 4000) == (batch.groups == 0)).all())


def test_default_sample_rate_is_batch_over_smallest_class() -> None:
    assert sample_rate_for(batch_real=50, class_counts=torch.tensor([200, 100, 0])) == 0.5
    assert sample_rate_for(batch_real=500, class_counts=torch.tensor([200, 100])) == 1.0


def test_statistics_refuse_to_exceed_the_budget() -> None:
    plan = plan_dp(DPConfig(epsilon=2.0), iterations=3, batch_real=10, class_counts=torch.tensor([50, 50]))
    stats = DPMeanStatistics(plan, class_counts=torch.tensor([50, 50]))
    emb, groups = torch.randn(8, 16), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    for _ in range(3):
        out = stats.class_means(emb, groups, num_classes=2, generator=torch.Generator())
        assert out.shape == (2, 16)
    assert stats.epsilon() <= 2.0
    with pytest.raises(PrivacyBudgetError, match="3 releases"):
        stats.class_means(emb, groups, num_classes=2, generator=torch.Generator())


def test_one_mechanism_object_serves_one_run_of_a_multi_round_plan() -> None:
    # a three-round plan is calibrated for 3 x 3 releases, but a run is certified for its own:
    # reusing the statistics for a second run would release 6 times under a 3-release certificate
    splits = load_dataset("digits")
    config = DistillConfig(ipc=1, iterations=3, init="noise", batch_real=32, dsa=False, mixed_precision=False)
    stats = PrivateCondensation(
        {"epsilon": 2.0, "delta": 1e-5}, distill=config, class_counts=splits.train.class_counts(), rounds=3
    ).statistics
    assert stats.plan.steps == 9 and stats.max_steps == 3
    DistributionMatching(config, real_statistics=stats).condense(splits.train)
    with pytest.raises(PrivacyBudgetError, match="3 releases and all are spent"):
        DistributionMatching(config, real_statistics=stats).condense(splits.train)


@pytest.mark.parametrize(
    ("private", "layout"), [(True, "sample"), (False, "class"), (False, "sample"), (False, None)]
)
def test_dp_augmentation_does_not_depend_on_the_other_sampled_images(
    private: bool, layout: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under DP each class shares one augmentation per iteration, drawn for a public slot count.

    With per-sample parameters an image's transform would follow its rank in the Poisson batch,
    i.e. the other images sampled, and one added image could move every later embedding.
    ``layout=None`` is the default config, which is the reference code's class layout.
    """
    from fedcond.distill.augment import SiameseAugment

    sampled: list[int] = []
    applied: list[tuple[int, torch.Tensor]] = []
    original_sample, original_apply = SiameseAugment.sample, SiameseAugment.apply

    def spy_sample(self, num_slots, **kwargs):
        sampled.append(num_slots)
        return original_sample(self, num_slots, **kwargs)

    def spy_apply(self, images, params, slots=None):
        applied.append((images.shape[0], slots.clone()))
        return original_apply(self, images, params, slots)

    monkeypatch.setattr(SiameseAugment, "sample", spy_sample)
    monkeypatch.setattr(SiameseAugment, "apply", spy_apply)
    splits = load_dataset("digits")
    config = DistillConfig(ipc=2, iterations=3, init="noise", batch_real=32, dsa=True, mixed_precision=False,
                           **({} if layout is None else {"augment": AugmentConfig(layout=layout)}))
    layout = layout or "class"  # the default
    stats = None
    if private:
        stats = PrivateCondensation(
            {"epsilon": 5.0, "delta": 1e-5}, distill=config, class_counts=splits.train.class_counts()
        ).statistics
    result = DistributionMatching(config, real_statistics=stats).condense(splits.train)
    assert len(sampled) == 3 and len(applied) == 6  # one draw, a real and a synthetic apply per iteration
    # DP forces the class layout whatever the config says
    assert result.synthetic.meta["dsa_layout"] == ("class" if private or layout == "class" else "sample")
    if private or layout == "class":
        assert sampled == [10, 10, 10]  # one parameter set per class, whatever the batch sizes
        for count, slots in applied:
            # every image of a class reads that class's row: slots are the sorted class groups
            assert slots.tolist() == sorted(slots.tolist()) and int(slots.max()) < 10
            assert torch.bincount(slots, minlength=10).sum() == count
        syn_slots = applied[1][1]
        assert syn_slots.tolist() == [c for c in range(10) for _ in range(2)]
    else:
        assert all(n >= 10 * 32 for n in sampled)  # per-sample parameters
        assert len(set(applied[0][1].tolist())) == applied[0][0]



def _dp_run(splits, *, noise_seed: int | None, iterations: int = 3, checkpoint=None, resume: bool = False,
            stop_at: int | None = None):
    """A small DP-DM run on digits with the public seed fixed at 0."""
    config = DistillConfig(ipc=1, iterations=iterations, init="noise", batch_real=32, dsa=False,
                           mixed_precision=False, seed=0, checkpoint_every=1 if checkpoint else 0)
    stats = PrivateCondensation({"epsilon": 5.0, "noise_seed": noise_seed}, distill=config,
                                class_counts=splits.train.class_counts()).statistics

    def stop(iteration: int, loss: float) -> None:
        if iteration == stop_at:
            raise KeyboardInterrupt  # a crash after the checkpoint of iteration ``stop_at``

    engine = DistributionMatching(config, real_statistics=stats)
    return engine.condense(splits.train, checkpoint_path=checkpoint, resume=resume, on_iteration=stop), stats


def test_dp_noise_is_secret_by_default_and_reproducible_only_from_its_own_seed() -> None:
    """The run's seed is published in the set's metadata: the noise must not follow from it."""
    splits = load_dataset("digits")
    secret_a, stats = _dp_run(splits, noise_seed=None)
    secret_b, _ = _dp_run(splits, noise_seed=None)
    assert stats.noise == "secret" and "noise_seed" not in stats.fingerprint()
    assert secret_a.synthetic.meta["seed"] == secret_b.synthetic.meta["seed"] == 0
    # same public seed, same start, same networks and augmentation: only the private draws differ
    assert not torch.equal(secret_a.synthetic.images, secret_b.synthetic.images)
    seeded_a, seeded = _dp_run(splits, noise_seed=7)
    seeded_b, _ = _dp_run(splits, noise_seed=7)
    other, _ = _dp_run(splits, noise_seed=8)
    assert seeded.noise == "seeded" and seeded.fingerprint()["noise_seed"] == 7
    assert torch.equal(seeded_a.synthetic.images, seeded_b.synthetic.images)
    assert not torch.equal(seeded_a.synthetic.images, other.synthetic.images)


def test_the_engine_generator_never_draws_the_private_randomness() -> None:
    """Poisson masks and noise come from the statistics' own generator, whatever generator is passed."""
    plan = plan_dp(DPConfig(epsilon=5.0), iterations=2, batch_real=4, class_counts=torch.tensor([8, 8]))
    pools = [torch.arange(8), torch.arange(8, 16)]
    emb = torch.randn(16, 6, generator=torch.Generator().manual_seed(0))
    draws = []
    for _ in range(2):
        stats = DPMeanStatistics(plan, class_counts=torch.tensor([8, 8]), noise_seed=3)
        public = torch.Generator().manual_seed(123)
        batch = stats.sample_batch(pools, generator=public)
        means = stats.class_means(emb[batch.indices], batch.groups, num_classes=2, generator=public)
        draws.append((batch.indices, means))
        assert torch.equal(public.get_state(), torch.Generator().manual_seed(123).get_state())
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])


def test_seeded_dp_resume_continues_the_noise_stream_instead_of_replaying_it(tmp_path) -> None:
    """A resumed seeded run equals the uninterrupted one: the private generator's state is checkpointed."""
    import numpy as np

    splits = load_dataset("digits")
    full, _ = _dp_run(splits, noise_seed=7, iterations=4)
    ckpt = tmp_path / "ckpt.npz"
    with pytest.raises(KeyboardInterrupt):
        _dp_run(splits, noise_seed=7, iterations=4, checkpoint=ckpt, stop_at=2)
    with np.load(ckpt) as archive:
        assert int(archive["iteration"]) == 2 and "statistics.private_generator" in archive.files
    resumed, stats = _dp_run(splits, noise_seed=7, iterations=4, checkpoint=ckpt, resume=True)
    assert len(resumed.losses) == 2 and stats.steps == 2
    assert torch.equal(resumed.synthetic.images, full.synthetic.images)
    # a seeded checkpoint without the state is refused (replaying the seed would reuse noise)
    with np.load(ckpt) as archive:
        kept = {k: archive[k] for k in archive.files if not k.startswith("statistics.")}
    np.savez(ckpt, **kept)
    with pytest.raises(ValueError, match="noise generator's state"):
        _dp_run(splits, noise_seed=7, iterations=4, checkpoint=ckpt, resume=True)


def test_secret_dp_checkpoint_keeps_no_noise_state_and_still_resumes(tmp_path) -> None:
    import numpy as np

    splits = load_dataset("digits")
    ckpt = tmp_path / "ckpt.npz"
    with pytest.raises(KeyboardInterrupt):
        _dp_run(splits, noise_seed=None, iterations=4, checkpoint=ckpt, stop_at=2)
    with np.load(ckpt) as archive:
        assert not [k for k in archive.files if k.startswith("statistics.")]
    resumed, stats = _dp_run(splits, noise_seed=None, iterations=4, checkpoint=ckpt, resume=True)
    assert len(resumed.losses) == 2 and stats.steps == 2


def test_derived_noise_seeds_differ_per_client_and_round() -> None:
    from fedcond.privacy.dp import derive_noise_seed, private_generator

    assert derive_noise_seed(None, 0, 1) is None
    seeds = {derive_noise_seed(5, pid, rnd) for pid in range(4) for rnd in (1, 2)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)
    assert derive_noise_seed(5, 2, 1) == derive_noise_seed(5, 2, 1)
    with pytest.raises(PrivacyBudgetError, match="noise_seed must be >= 0"):
        private_generator(-1)


def test_dp_means_are_clipped_sums_over_the_public_expected_counts() -> None:
    """Noise-free class means: sum of clipped rescaled rows / (q * n_c), scaled back by sqrt(D).

    The normaliser is the public expected batch size, never the batch's actual class counts
    (which depend on the private Poisson draw and on every sampled image).
    """
    plan = DPPlan(1.0, 1e-5, 0.1, 0.0, 1.0, 1, "rdp")  # sample rate 0.1, sigma 0, clip norm 1
    stats = DPMeanStatistics(plan, class_counts=torch.tensor([100, 50]), noise_seed=0)
    dim = 16  # rows are rescaled by 1 / sqrt(16) = 1/4 before clipping
    emb = torch.zeros(3, dim)
    emb[:2, 0] = 100.0  # rescaled to 25: clipped to norm 1
    emb[2, 0] = 2.0  # rescaled to 0.5, inside the ball: kept as is
    means = stats.class_means(emb, torch.tensor([0, 0, 1]), num_classes=2, generator=torch.Generator())
    assert float(means[0, 0]) == pytest.approx(2 * 1.0 * 4 / (0.1 * 100), rel=1e-5)  # 0.8, batch mean 4
    assert float(means[1, 0]) == pytest.approx(1 * 0.5 * 4 / (0.1 * 50), rel=1e-5)  # 0.4, batch mean 2
    assert float(means[:, 1:].abs().max()) == 0.0


def test_dp_means_carry_the_calibrated_noise() -> None:
    """Each coordinate of a class mean has std sigma * C * sqrt(D) / (q * n_c).

    The sum gets N(0, (sigma C)^2) per coordinate in the rescaled (1 / sqrt(D)) space; dividing
    by the expected count q * n_c and scaling back by sqrt(D) gives that std.
    """
    counts = torch.tensor([100, 100])
    plan = plan_dp(DPConfig(epsilon=1.0), iterations=5, batch_real=10, class_counts=counts)
    assert plan.noise_multiplier > 0.5 and plan.sample_rate == pytest.approx(0.1)
    stats = DPMeanStatistics(plan, class_counts=counts, noise_seed=0)
    dim = 8192
    means = stats.class_means(
        torch.zeros(4, dim), torch.tensor([0, 0, 1, 1]), num_classes=2, generator=torch.Generator()
    )
    expected_std = plan.noise_multiplier * plan.clip_norm * dim**0.5 / (plan.sample_rate * 100)
    assert float(means.std()) == pytest.approx(expected_std, rel=0.03)
    assert float(means.mean()) == pytest.approx(0.0, abs=0.05 * expected_std)
