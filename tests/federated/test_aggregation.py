"""The union of client sets: the weight formula image by image, class totals, and the canonical order."""

from __future__ import annotations

import itertools

import pytest
import torch

from fedcond.distill.synthetic import SyntheticSet
from fedcond.federated.aggregation import aggregate_sets
from fedcond.federated.validation import ClientSet


def _client(
    node_id: int, labels: list[int], counts: dict[int, int], *, images: torch.Tensor | None = None
) -> ClientSet:
    if images is None:
        images = torch.randn((len(labels), 1, 4, 4), generator=torch.Generator().manual_seed(node_id))
    synthetic = SyntheticSet(images, torch.tensor(labels), {"num_classes": 4})
    class_counts = torch.tensor([counts.get(c, 0) for c in range(4)], dtype=torch.int64)
    return ClientSet(node_id, synthetic, class_counts, {})


def test_every_image_weighs_its_clients_real_count_over_image_count_times_m_over_n() -> None:
    clients = [
        _client(1, [0, 0, 0, 1], {0: 60, 1: 5}),
        _client(2, [0, 2, 2], {0: 10, 2: 30}),
        _client(3, [1, 1, 3, 3], {1: 15, 3: 8}),
    ]
    union = aggregate_sets(clients, num_classes=4)
    m_total, n_total = 11, 60 + 5 + 10 + 30 + 15 + 8
    assert len(union) == m_total and union.weights.dtype == torch.float32
    for image, label, weight in zip(union.images, union.labels, union.weights, strict=True):
        (owner,) = [c for c in clients if any(torch.equal(image, x) for x in c.synthetic.images)]
        c = int(label)
        n_kc = int(owner.class_counts[c])
        m_kc = int((owner.synthetic.labels == c).sum())
        assert weight.item() == pytest.approx(n_kc / m_kc * m_total / n_total, rel=1e-6)
    assert union.weights.mean().item() == pytest.approx(1.0)
    assert union.weights.sum().item() == pytest.approx(m_total)
    # each class's total weight is its share of the federation's real samples, times M
    real = torch.tensor([70, 20, 30, 8])
    assert torch.equal(union.real_counts, real)
    for c in range(4):
        share = union.weights[union.labels == c].sum().item()
        assert share == pytest.approx(real[c].item() / n_total * m_total, rel=1e-6)
    assert union.labels.tolist() == sorted(union.labels.tolist())  # grouped by class, class 0 first


def _union_in_every_order(clients: list[ClientSet]):
    return [aggregate_sets(list(order), num_classes=4) for order in itertools.permutations(clients)]


def test_clients_with_identical_images_and_different_counts_are_ordered_by_their_counts_too() -> None:
    images = torch.randn((2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    clients = [_client(1, [0, 0], {0: 90}, images=images), _client(2, [0, 0], {0: 10}, images=images.clone())]
    unions = _union_in_every_order(clients)
    assert sorted(set(unions[0].weights.tolist())) == pytest.approx([0.2, 1.8])
    for other in unions[1:]:
        assert torch.equal(other.weights, unions[0].weights)


def test_clients_with_identical_images_and_different_labels_are_ordered_by_their_labels_too() -> None:
    images = torch.randn((2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    clients = [
        _client(1, [0, 1], {0: 10, 1: 10}, images=images),
        _client(2, [1, 0], {0: 10, 1: 10}, images=images.clone()),
    ]
    unions = _union_in_every_order(clients)
    for other in unions[1:]:
        assert torch.equal(other.images, unions[0].images) and torch.equal(other.labels, unions[0].labels)


def test_the_union_of_three_clients_is_the_same_in_all_six_arrival_orders() -> None:
    clients = [_client(7, [0, 1], {0: 3, 1: 4}), _client(3, [1, 2], {1: 9, 2: 2}), _client(5, [0, 3], {0: 1, 3: 6})]
    unions = _union_in_every_order(clients)
    for other in unions[1:]:
        assert torch.equal(other.images, unions[0].images)
        assert torch.equal(other.weights, unions[0].weights)
        assert other.node_ids == unions[0].node_ids
    assert sorted(unions[0].node_ids) == [3, 5, 7]


def test_sets_without_any_real_sample_behind_them_are_refused() -> None:
    # validate_reply refuses such a reply (orphan classes); aggregate_sets must not divide by zero
    with pytest.raises(ValueError, match="hold no images"):
        aggregate_sets([_client(1, [0], {})], num_classes=4)
