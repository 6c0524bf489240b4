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
