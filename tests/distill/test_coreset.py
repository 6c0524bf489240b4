"""Coreset baselines return the right number of real images per class."""

from __future__ import annotations

import pytest
import torch

from fedcond.distill.coreset import herding_order, select_coreset


@pytest.mark.parametrize("method", ["random", "herding"])
def test_counts_per_class_and_real_images(method: str, digits) -> None:
    coreset = select_coreset(digits.train, ipc=3, method=method, seed=0)
    assert coreset.class_counts().tolist() == [3] * 10
    # every selected image is a real training image of its label
    for image, label in zip(coreset.images, coreset.labels, strict=True):
        matches = (digits.train.images == image).flatten(1).all(1)
        assert matches.any() and bool((digits.train.labels[matches] == label).all())
    assert coreset.meta["method"] == method


def test_absent_class_is_skipped_and_small_class_gives_what_it_has(digits) -> None:
    keep = torch.nonzero(digits.train.labels != 3).flatten()
    two_of_five = torch.nonzero(digits.train.labels == 5).flatten()[:2]
    data = digits.train.subset(torch.cat([keep[digits.train.labels[keep] != 5], two_of_five]))
    coreset = select_coreset(data, ipc=4, method="random")
    counts = coreset.class_counts().tolist()
    assert counts[3] == 0 and counts[5] == 2 and counts[0] == 4
    assert coreset.meta["skipped_classes"] == [3]


def test_herding_tracks_the_mean_better_than_random() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(500, 16, generator=gen)
    chosen = herding_order(feats, k=10)
    assert len(set(chosen.tolist())) == 10
    herd_err = (feats[chosen].mean(0) - feats.mean(0)).norm()
    rand_err = torch.stack(
        [(feats[torch.randperm(500, generator=gen)[:10]].mean(0) - feats.mean(0)).norm() for _ in range(50)]
    ).mean()
    assert herd_err < 0.5 * rand_err


def test_bad_ipc(digits) -> None:
    with pytest.raises(ValueError, match="ipc must be positive"):
        select_coreset(digits.train, ipc=0)
    with pytest.raises(ValueError, match="unknown coreset method"):
        select_coreset(digits.train, ipc=1, method="kcenter")


def test_herding_order_on_a_worked_example() -> None:
    # mean 3.2: pick 3 (running mean 3), then 2 (2.5), 1 (2.0), 10 (4.0), 0 (3.2)
    features = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    assert herding_order(features, k=5).tolist() == [3, 2, 1, 4, 0]
    assert herding_order(features, k=2).tolist() == [3, 2]  # a prefix of the longer order
    assert herding_order(features, k=9).tolist() == [3, 2, 1, 4, 0]  # at most every row, once


def test_random_selection_follows_the_seed(digits) -> None:
    a = select_coreset(digits.train, ipc=5, method="random", seed=0)
    b = select_coreset(digits.train, ipc=5, method="random", seed=0)
    c = select_coreset(digits.train, ipc=5, method="random", seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    # not simply the first images of each class in dataset order
    first = torch.cat([digits.train.images[digits.train.labels == k][:5] for k in range(10)])
    assert not torch.equal(a.images, first)
    assert a.meta["seed"] == 0 and c.meta["seed"] == 1


def test_coreset_metadata_describes_the_selection(digits) -> None:
    coreset = select_coreset(digits.train, ipc=2, method="herding", seed=4)
    meta = coreset.meta
    assert meta["ipc"] == 2 and meta["method"] == "herding" and meta["init"] == "real"
    assert meta["iterations"] == 0 and meta["skipped_classes"] == []
    assert meta["num_classes"] == 10 and meta["image_shape"] == [1, 8, 8] and meta["dataset"] == "digits"


def test_herding_takes_every_image_of_a_class_smaller_than_ipc(digits) -> None:
    four = torch.nonzero(digits.train.labels == 4).flatten()[:3]
    data = digits.train.subset(torch.cat([torch.nonzero(digits.train.labels != 4).flatten(), four]))
    coreset = select_coreset(data, ipc=5, method="herding")
    assert coreset.class_counts()[4] == 3
    chosen = {tuple(row.tolist()) for row in coreset.images[coreset.labels == 4].flatten(1)}
    assert chosen == {tuple(row.tolist()) for row in digits.train.images[four].flatten(1)}


def test_a_herding_selector_made_for_another_dataset_adapts_to_the_data(digits) -> None:
    from fedcond.data import get_spec
    from fedcond.distill.coreset import HerdingSelector

    plain = select_coreset(digits.train, ipc=2, method="herding", seed=0)
    for other in ("mnist", "cifar10"):  # a 28x28 or a 3-channel embedder; the data are 8x8 digits
        selector = HerdingSelector(spec=get_spec(other))
        coreset = select_coreset(digits.train, ipc=2, method=selector, seed=0)
        assert torch.equal(coreset.images, plain.images)  # the same random embedder as for digits
        assert selector.spec == get_spec(other)  # the caller's object is left as it was


def test_a_supplied_embedder_is_run_in_eval_mode_and_drives_the_order(digits) -> None:
    from torch import nn

    from fedcond.distill.coreset import HerdingSelector

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        embedder = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Dropout(0.5)).train()
    images = digits.train.images[digits.train.labels == 2][:40]
    generator = torch.Generator().manual_seed(0)
    features = HerdingSelector(embedder).features(images, generator=generator)
    assert embedder.training  # given back in its own mode
    with torch.no_grad():
        expected = embedder.eval()(images)  # running statistics, no dropout: deterministic
    embedder.train()
    torch.testing.assert_close(features, expected)
    order = HerdingSelector(embedder).select(images, k=6, generator=generator)
    assert order.tolist() == herding_order(expected, k=6).tolist()
