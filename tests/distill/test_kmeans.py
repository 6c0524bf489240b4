"""Seeded k-means: finds separated clusters, beats random centres, is reproducible, refuses bad input;
``init="kmeans"`` starts DM at each class's centroids."""

from __future__ import annotations

import pytest
import torch

from fedcond.config import DistillConfig
from fedcond.distill.dm import DistributionMatching, initial_synthetic
from fedcond.distill.kmeans import kmeans


def test_recovers_well_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = centres.repeat_interleave(50, dim=0) + 0.1 * torch.randn(200, 2, generator=g)
    result = kmeans(points, k=4, generator=torch.Generator().manual_seed(1))
    found = sorted(map(tuple, result.centroids.round().tolist()))
    assert found == sorted(map(tuple, centres.tolist()))
    assert torch.bincount(result.assignments, minlength=4).tolist() == [50, 50, 50, 50]


def test_digit_centroids_fit_the_class_better_than_random_real_images(digits) -> None:
    images = digits.train.images[digits.train.labels == 3]
    flat = images.flatten(1)
    result = kmeans(images, k=10, generator=torch.Generator().manual_seed(0))
    assert result.centroids.shape == (10, 1, 8, 8)
    assert result.inertia == pytest.approx(
        float(torch.cdist(flat, result.centroids.flatten(1)).pow(2).min(dim=1).values.sum()), rel=1e-4
    )
    for seed in range(3):  # the same number of real images as centres covers the class worse
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:10]
        random_inertia = float(torch.cdist(flat, flat[pick]).pow(2).min(dim=1).values.sum())
        assert result.inertia < 0.8 * random_inertia


def test_reproducible_from_the_generator_and_more_restarts_never_worse(digits) -> None:
    images = digits.train.images[digits.train.labels == 5]
    a = kmeans(images, k=6, generator=torch.Generator().manual_seed(3))
    b = kmeans(images, k=6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.assignments, b.assignments)
    one = kmeans(images, k=6, generator=torch.Generator().manual_seed(3), restarts=1)
    assert a.inertia <= one.inertia  # the first of the 10 restarts is that single run


def test_k_equal_to_the_number_of_points_and_duplicates() -> None:
    points = torch.tensor([[0.0], [1.0], [2.0]])
    assert kmeans(points, k=3, generator=torch.Generator().manual_seed(0)).inertia == pytest.approx(0.0)
    same = torch.zeros(5, 3)  # every point identical: still k centres, no NaN
    result = kmeans(same, k=2, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(result.centroids).all() and result.inertia == 0.0


@pytest.mark.parametrize(
    ("points", "k", "message"),
    [
        (torch.zeros(0, 2), 1, "at least one point"),
        (torch.zeros(3, 2), 0, "k must be in"),
        (torch.zeros(3, 2), 4, "k must be in"),
        (torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), 1, "NaN"),
    ],
)
def test_bad_input_is_refused(points, k, message) -> None:
    with pytest.raises(ValueError, match=message):
        kmeans(points, k=k, generator=torch.Generator())


def test_kmeans_init_starts_dm_at_the_class_centroids(digits) -> None:
    config = DistillConfig(ipc=3, iterations=0, init="kmeans", seed=2)
    synthetic = DistributionMatching(config).condense(digits.train).synthetic
    assert synthetic.meta["init"] == "kmeans"
    assert synthetic.labels.tolist() == torch.arange(10).repeat_interleave(3).tolist()
    direct, _ = initial_synthetic(digits.train, ipc=3, init="kmeans", classes=list(range(10)),
                                  generator=torch.Generator().manual_seed(2))
    assert torch.equal(synthetic.images, direct)
    for c in range(10):  # each image is a centroid: the mean of the class images nearest to it
        members = digits.train.images[digits.train.labels == c].flatten(1)
        centres = synthetic.images[synthetic.labels == c].flatten(1)
        nearest = torch.cdist(members, centres).argmin(dim=1)
        for j in range(3):
            assert torch.allclose(members[nearest == j].mean(dim=0), centres[j], atol=1e-4)
    # and DM moves on from there
    moved = DistributionMatching(DistillConfig(ipc=3, iterations=5, init="kmeans", seed=2)).condense(digits.train)
    assert not torch.equal(moved.synthetic.images, synthetic.images)


def test_kmeans_init_needs_ipc_images_per_class(digits) -> None:
    few = digits.train.subset([int(i) for i in torch.nonzero(digits.train.labels == 4).flatten()[:2]])
    with pytest.raises(ValueError, match="kmeans init needs"):
        DistributionMatching(DistillConfig(ipc=3, iterations=0, init="kmeans")).condense(few)


def test_the_best_of_the_restarts_is_kept(digits) -> None:
    # each restart consumes the generator like one single-restart call, so ten single calls on one
    # generator are the ten restarts of one call: that call must return the lowest of them
    images = digits.train.images[digits.train.labels == 5]
    generator = torch.Generator().manual_seed(3)
    runs = [kmeans(images, k=6, generator=generator, restarts=1) for _ in range(10)]
    best = kmeans(images, k=6, generator=torch.Generator().manual_seed(3), restarts=10)
    lowest = min(runs, key=lambda run: run.inertia)
    assert best.inertia == lowest.inertia < runs[0].inertia
    assert torch.equal(best.centroids, lowest.centroids)


def test_plus_plus_seeding_puts_a_centre_in_every_far_group() -> None:
    # 40 noisy points near the origin and two lone points far away: k-means++ draws the 2nd and
    # 3rd centres in proportion to the squared distance to the nearest centre, so the lone points
    # are always seeded, and one Lloyd step already gives the optimum (inertia = the spread of
    # the cloud); uniform seeding, or distances not updated after each pick, misses them
    cloud = 0.1 * torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    points = torch.cat([cloud, torch.tensor([[100.0, 0.0], [0.0, 100.0]])])
    spread = float(((cloud - cloud.mean(0)) ** 2).sum())
    for seed in range(10):
        result = kmeans(points, k=3, generator=torch.Generator().manual_seed(seed), restarts=1, max_iterations=1)
        assert result.inertia == pytest.approx(spread, rel=1e-4), seed


def test_the_first_centre_is_drawn_from_the_generator() -> None:
    # with k = n every point is a centre; which one comes first is the generator's choice
    points = torch.arange(6.0).view(6, 1)
    firsts = {
        float(kmeans(points, k=6, generator=torch.Generator().manual_seed(seed), restarts=1).centroids[0, 0])
        for seed in range(10)
    }
    assert len(firsts) > 2


def test_assignments_and_inertia_match_the_returned_centroids_when_lloyd_runs_out_of_steps(digits) -> None:
    images = digits.train.images[digits.train.labels == 8]
    flat = images.flatten(1)
    for steps in (1, 2):
        result = kmeans(images, k=8, generator=torch.Generator().manual_seed(0), restarts=2, max_iterations=steps)
        distances = torch.cdist(flat, result.centroids.flatten(1)).pow(2)
        assert torch.equal(result.assignments, distances.argmin(dim=1))
        assert result.inertia == pytest.approx(float(distances.min(dim=1).values.sum()), rel=1e-4)
    converged = kmeans(images, k=8, generator=torch.Generator().manual_seed(0), restarts=2)
    assert converged.inertia < result.inertia
