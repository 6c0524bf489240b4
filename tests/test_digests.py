"""fedcond.digests: one content digest for data and state (ledgers, checkpoints)."""

from __future__ import annotations

import torch

from fedcond.digests import tensor_digest
from fedcond.privacy.ledger import data_source_digest


def test_the_digest_covers_dtype_shape_bytes_and_order():
    images = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    labels = torch.tensor([0, 1])
    base = tensor_digest(images, labels)
    assert tensor_digest(images.clone(), labels.clone()) == base
    assert tensor_digest(images.reshape(3, 2), labels) != base  # same bytes, other shape
    assert tensor_digest(images.double(), labels) != base
    assert tensor_digest(labels, images) != base
    assert tensor_digest(images, labels, None) != base  # an absent tensor is still counted
    assert tensor_digest(images.t().contiguous().t(), labels) == base  # layout in memory does not matter


def test_a_ledgers_data_source_digest_is_stable():
    # persistent DP ledgers on nodes' disks are bound to this value: it must never change
    images = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    labels = torch.tensor([0, 1])
    expected = "5154cbed30e9e13f39a06f433bfa177492976685b80115a83c0979f7c4913e97"
    assert data_source_digest(images, labels) == tensor_digest(images, labels) == expected
