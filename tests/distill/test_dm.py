"""Distribution matching: the loss goes down, runs are reproducible, bad input is refused."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from fedcond.config import ConfigError, DistillConfig
from fedcond.distill.dm import DistributionMatching, DistributionMatchingLoss, dm_loss, initial_synthetic
from fedcond.distill.statistics import class_means
from fedcond.models import get_model


def _probe_loss(images: torch.Tensor, labels: torch.Tensor, data, *, nets: int = 8) -> float:
    """DM loss (no augmentation) averaged over fixed, seeded random networks."""
    total = 0.0
    with torch.no_grad():
        for k in range(nets):
            net = get_model("convnet", data.spec, generator=torch.Generator().manual_seed(1000 + k))
            real = class_means(net.embed(data.images), data.labels, num_classes=10)
            syn = class_means(net.embed(images), labels, num_classes=10)
            total += float(dm_loss(real, syn))
    return total / nets


def test_dm_loss_decreases_on_digits(digits) -> None:
    config = DistillConfig(ipc=2, iterations=60, init="noise", seed=0)
    result = DistributionMatching(config).condense(digits.train)
    before_images = torch.randn((20, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    labels = result.synthetic.labels
    before = _probe_loss(before_images, labels, digits.train)
    after = _probe_loss(result.synthetic.images, labels, digits.train)
    assert after < 0.5 * before
    assert len(result.losses) == 60
    assert result.synthetic.class_counts().tolist() == [2] * 10


def test_same_seed_same_result_other_seed_different(digits) -> None:
    config = DistillConfig(ipc=1, iterations=5, seed=11)
    a = DistributionMatching(config).condense(digits.train).synthetic
    b = DistributionMatching(config).condense(digits.train).synthetic
    c = DistributionMatching(DistillConfig(ipc=1, iterations=5, seed=12)).condense(digits.train).synthetic
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


def test_checkpoint_resume_matches_an_uninterrupted_run(digits, tmp_path) -> None:
    full = DistributionMatching(DistillConfig(ipc=1, iterations=8, seed=3)).condense(digits.train)
    ckpt = tmp_path / "ckpt.npz"
    DistributionMatching(DistillConfig(ipc=1, iterations=4, seed=3, checkpoint_every=2)).condense(
        digits.train, checkpoint_path=ckpt
    )
    resumed = DistributionMatching(DistillConfig(ipc=1, iterations=8, seed=3, checkpoint_every=2)).condense(
        digits.train, checkpoint_path=ckpt, resume=True
    )
    assert len(resumed.losses) == 4
    assert torch.allclose(resumed.synthetic.images, full.synthetic.images, atol=1e-5)
    # the checkpoint carries the first segment's losses and time: the whole run's history is known
    assert resumed.resumed_from == 4 and resumed.earlier_seconds > 0
    assert resumed.all_losses == pytest.approx(full.losses, rel=1e-4)


def test_resume_refuses_a_checkpoint_of_another_run(digits, tmp_path) -> None:
    ckpt = tmp_path / "ckpt.npz"
    DistributionMatching(DistillConfig(ipc=1, iterations=2, seed=3, checkpoint_every=2)).condense(
        digits.train, checkpoint_path=ckpt
    )
    other = DistributionMatching(DistillConfig(ipc=1, iterations=4, seed=3, checkpoint_every=2, lr_img=5.0))
    with pytest.raises(ValueError, match=r"different run \(config.lr_img: 1.0 -> 5.0\)"):
        other.condense(digits.train, checkpoint_path=ckpt, resume=True)
    # more iterations of the same run is a legitimate resume
    longer = DistributionMatching(DistillConfig(ipc=1, iterations=4, seed=3, checkpoint_every=2))
    assert len(longer.condense(digits.train, checkpoint_path=ckpt, resume=True).losses) == 2


def test_resume_refuses_a_checkpoint_past_the_requested_iterations(digits, tmp_path) -> None:
    """Resuming 3 iterations' work as a 1-iteration run would mislabel it (and rewind the checkpoint)."""
    ckpt = tmp_path / "ckpt.npz"
    DistributionMatching(DistillConfig(ipc=1, iterations=3, seed=3, checkpoint_every=1)).condense(
        digits.train, checkpoint_path=ckpt
    )
    before = ckpt.read_bytes()
    shorter = DistributionMatching(DistillConfig(ipc=1, iterations=1, seed=3, checkpoint_every=1))
    with pytest.raises(ValueError, match="at iteration 3, past this run's 1 iterations"):
        shorter.condense(digits.train, checkpoint_path=ckpt, resume=True)
    assert ckpt.read_bytes() == before  # nothing already written is lost


def test_dp_run_refuses_to_resume_a_non_private_checkpoint(digits, tmp_path) -> None:
    from fedcond.privacy.private_condensation import PrivateCondensation

    ckpt = tmp_path / "ckpt.npz"
    config = DistillConfig(ipc=1, iterations=2, init="noise", batch_real=32, checkpoint_every=1, seed=0)
    DistributionMatching(config).condense(digits.train, checkpoint_path=ckpt)
    stats = PrivateCondensation({"epsilon": 2.0}, distill=config, class_counts=digits.train.class_counts()).statistics
    with pytest.raises(ValueError, match="statistics.kind: 'mean' -> 'dp-mean'"):
        DistributionMatching(config, real_statistics=stats).condense(digits.train, checkpoint_path=ckpt, resume=True)
    assert stats.steps == 0  # refused before any private data was touched


def test_absent_class_is_skipped_with_a_warning(digits, caplog) -> None:
    keep = torch.nonzero(digits.train.labels != 7).flatten()
    with caplog.at_level(logging.WARNING):
        result = DistributionMatching(DistillConfig(ipc=1, iterations=2)).condense(digits.train.subset(keep))
    assert result.skipped_classes == [7]
    assert 7 not in result.synthetic.labels.tolist() and len(result.synthetic) == 9
    assert "no real samples" in caplog.text


def test_supplied_embedder_is_used_and_left_unchanged(digits) -> None:
    embedder = get_model("convnet", digits.spec, generator=torch.Generator().manual_seed(5))
    before = [p.clone() for p in embedder.parameters()]
    config = DistillConfig(ipc=1, iterations=3, seed=0)
    with_embedder = DistributionMatching(config, embedder=embedder).condense(digits.train).synthetic
    random_nets = DistributionMatching(config).condense(digits.train).synthetic
    assert not torch.equal(with_embedder.images, random_nets.images)
    assert all(torch.equal(a, b) for a, b in zip(before, embedder.parameters(), strict=True))


def test_supplied_embedder_gets_its_mode_and_grad_flags_back_and_a_second_run_repeats(digits) -> None:
    embedder = get_model("convnet", digits.spec, generator=torch.Generator().manual_seed(5)).eval()
    engine = DistributionMatching(DistillConfig(ipc=1, iterations=2, seed=0), embedder=embedder)
    first = engine.condense(digits.train).synthetic
    assert not embedder.training and all(p.requires_grad for p in embedder.parameters())
    second = engine.condense(digits.train).synthetic
    assert torch.equal(first.images, second.images)
    assert not embedder.training and all(p.requires_grad for p in embedder.parameters())


def test_one_engine_condenses_datasets_of_different_shapes(digits) -> None:
    import torch.nn.functional as F

    from fedcond.data import ArrayDataset, DatasetSpec

    engine = DistributionMatching(DistillConfig(ipc=1, iterations=2, seed=0))
    small = engine.condense(digits.train).synthetic
    spec = digits.spec
    big_spec = DatasetSpec(spec.name, spec.num_classes, spec.channels, (16, 16), spec.mean, spec.std)
    big = ArrayDataset(F.interpolate(digits.train.images, size=(16, 16)), digits.train.labels, big_spec)
    large = engine.condense(big).synthetic
    assert small.images.shape[1:] == (1, 8, 8) and large.images.shape[1:] == (1, 16, 16)
    # reusing the engine changes nothing: a fresh one gives the same set
    fresh = DistributionMatching(DistillConfig(ipc=1, iterations=2, seed=0)).condense(big).synthetic
    assert torch.equal(large.images, fresh.images)


def test_chunked_real_forward_matches_one_forward(digits) -> None:
    # digits holds ~144 images per class, so every iteration embeds ~1437 real images: chunks of
    # 100 (with a padded 37-image tail when compiled) must give the same synthetic set in fp32
    base = DistillConfig(ipc=2, iterations=4, seed=2, mixed_precision=False)
    whole = DistributionMatching(replace(base, real_chunk=0)).condense(digits.train)
    chunked = DistributionMatching(replace(base, real_chunk=100)).condense(digits.train)
    assert torch.allclose(chunked.synthetic.images, whole.synthetic.images, atol=1e-4)
    assert chunked.losses == pytest.approx(whole.losses, rel=1e-4)
    # the padded tail (what the compiled path does) drops the zero rows again
    loss = DistributionMatching(replace(base, real_chunk=100, compile=True)).loss
    loss._net = get_model("convnet", digits.spec, generator=torch.Generator().manual_seed(0))
    loss._real_embed = loss._net.embed
    images = digits.train.images[:237]
    with torch.no_grad():
        assert torch.allclose(loss._embed_real(images), loss._net.embed(images), atol=1e-5)


def test_herding_init_starts_closer_to_the_real_statistics_than_random_real_images(digits) -> None:
    classes = list(range(10))
    for seed in (0, 1):
        real = initial_synthetic(
            digits.train, ipc=3, init="real", classes=classes, generator=torch.Generator().manual_seed(seed)
        )
        herd = initial_synthetic(
            digits.train, ipc=3, init="herding", classes=classes, generator=torch.Generator().manual_seed(seed)
        )
        assert torch.equal(herd[1], real[1])  # ipc labels per class, class order
        # every herding image is a real training image of its class
        flat = digits.train.images.flatten(1)
        for image, label in zip(herd[0], herd[1], strict=True):
            match = torch.nonzero((flat == image.flatten()).all(dim=1)).flatten()
            assert match.numel() >= 1 and int(digits.train.labels[match[0]]) == int(label)
        # measured under networks other than the one herding used: 2-4x lower DM loss
        assert _probe_loss(*herd, digits.train) < 0.6 * _probe_loss(*real, digits.train)


def test_herding_init_through_the_engine_is_reproducible_and_needs_enough_images(digits) -> None:
    config = DistillConfig(ipc=2, iterations=0, init="herding", seed=4)
    first = DistributionMatching(config).condense(digits.train).synthetic
    assert first.meta["init"] == "herding"
    assert torch.equal(first.images, DistributionMatching(config).condense(digits.train).synthetic.images)
    few = digits.train.subset([int(i) for i in torch.nonzero(digits.train.labels == 4).flatten()[:1]])
    with pytest.raises(ValueError, match="herding init needs"):
        DistributionMatching(config).condense(few)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ipc": 0}, "'distill.ipc' must be >= 1"),
        ({"ipc": -2}, "'distill.ipc' must be >= 1"),
        ({"init": "zeros"}, "'distill.init' must be one of real, herding, kmeans, noise"),
        ({"iterations": -1}, "'distill.iterations' must be >= 0"),
        ({"real_chunk": -1}, "'distill.real_chunk' must be >= 0"),
        ({"lr_img": float("nan")}, "'distill.lr_img' must be a finite number"),
        ({"lr_img": 0.0}, "'distill.lr_img' must be > 0"),
        ({"momentum": 1.0}, r"'distill.momentum' must lie in \[0, 1\)"),
        ({"mmd_weight": float("inf")}, "'distill.mmd_weight' must be a finite number"),
        ({"checkpoint_every": -1}, "'distill.checkpoint_every' must be >= 0"),
    ],
)
def test_bad_configs_are_refused_before_dm_is_built(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**values)


def test_bad_data(digits) -> None:
    engine = DistributionMatching(DistillConfig(ipc=1, iterations=1))
    images = digits.train.images.clone()
    images[3, 0, 2, 2] = float("nan")
    nan_data = type(digits.train)(images, digits.train.labels, digits.spec)
    with pytest.raises(ValueError, match="NaN"):
        engine.condense(nan_data)
    labels = digits.train.labels.clone()
    labels[0] = 10
    with pytest.raises(ValueError, match="labels outside"):
        engine.condense(type(digits.train)(digits.train.images, labels, digits.spec))
    few = digits.train.subset(torch.nonzero(digits.train.labels != 4).flatten()[:0].tolist() + [
        int(i) for i in torch.nonzero(digits.train.labels == 4).flatten()[:3]
    ])
    with pytest.raises(ValueError, match="holds 3 image"):
        DistributionMatching(DistillConfig(ipc=5, iterations=1)).condense(few)
    # noise init has no such limit
    assert len(DistributionMatching(DistillConfig(ipc=5, iterations=1, init="noise")).condense(few).synthetic) == 5


def test_mnist_slice_condenses(mnist) -> None:
    data = mnist.train.subset(torch.arange(3000))
    result = DistributionMatching(DistillConfig(ipc=1, iterations=4, seed=0)).condense(data)
    assert result.synthetic.images.shape == (10, 1, 28, 28)
    assert result.synthetic.meta["dataset"] == "mnist"
    assert all(torch.isfinite(torch.tensor(result.losses)))


def test_a_compiled_forward_sees_few_shapes_when_the_dp_batch_size_varies(digits, monkeypatch) -> None:
    """A Poisson batch changes size every iteration; unpadded, each new size would recompile.

    Compilation itself is replaced by the eager forward (it takes a minute on CPU); what is
    checked is the shapes the compiled function would see, and that padding changes nothing.
    """
    from fedcond.privacy.private_condensation import PrivateCondensation

    shapes: list[int] = []

    def eager_spy(self, net):
        def forward(images):
            shapes.append(images.shape[0])
            return net.embed(images)

        return forward

    monkeypatch.setattr(DistributionMatchingLoss, "_maybe_compile", eager_spy)
    config = DistillConfig(ipc=1, iterations=6, init="noise", batch_real=40, dsa=False, mixed_precision=False,
                           real_chunk=0, compile=True)
    counts = digits.train.class_counts()
    runs = {}
    for compiled in (True, False):
        stats = PrivateCondensation({"epsilon": 5.0, "noise_seed": 1}, distill=config, class_counts=counts).statistics
        shapes.clear()
        runs[compiled] = DistributionMatching(replace(config, compile=compiled), real_statistics=stats).condense(
            digits.train
        )
        if compiled:
            assert len(shapes) == 6
            assert len(set(shapes[1:])) <= 2 and all(n % 256 == 0 for n in shapes[1:])
        else:
            assert len(set(shapes)) > 3  # the Poisson batch sizes themselves
    assert torch.allclose(runs[True].synthetic.images, runs[False].synthetic.images, atol=1e-4)


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(digits, tmp_path, monkeypatch) -> None:
    # a loss that turns NaN must stop the run, not go on and overwrite the checkpoint with NaN images
    from fedcond.distill.dm import DivergenceError

    ckpt = tmp_path / "ckpt.npz"
    config = DistillConfig(ipc=1, iterations=6, seed=0, checkpoint_every=2, dsa=False)
    engine = DistributionMatching(config)
    original = engine.loss.loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(engine.loss, "loss", poisoned)
    with pytest.raises(DivergenceError, match="diverged at iteration 3.*keeps the last good state"):
        engine.condense(digits.train, checkpoint_path=ckpt)
    import numpy as np

    with np.load(ckpt) as saved:
        assert int(saved["iteration"]) == 2 and np.isfinite(saved["images"]).all()


def test_resume_refuses_a_truncated_or_tampered_checkpoint_and_keeps_it(digits, tmp_path) -> None:
    ckpt = tmp_path / "ckpt.npz"
    config = DistillConfig(ipc=1, iterations=4, seed=3, checkpoint_every=2)
    DistributionMatching(DistillConfig(ipc=1, iterations=2, seed=3, checkpoint_every=2)).condense(
        digits.train, checkpoint_path=ckpt
    )
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[:200])
    with pytest.raises(ValueError, match="unreadable or corrupted"):
        DistributionMatching(config).condense(digits.train, checkpoint_path=ckpt, resume=True)
    assert ckpt.read_bytes() == good[:200]  # nothing is overwritten on the way out
    ckpt.write_bytes(good)
    with np.load(ckpt, allow_pickle=False) as stored:
        arrays = {name: np.array(stored[name]) for name in stored.files}
    arrays["momentum"] = arrays["momentum"][:, :, :4]
    np.savez(ckpt, **arrays)
    with pytest.raises(ValueError, match="corrupted: momentum of shape"):
        DistributionMatching(config).condense(digits.train, checkpoint_path=ckpt, resume=True)
