"""The privacy tests train many tiny models: one intra-op thread is faster than two for them
(and far faster on a busy machine, where OpenMP threads wait on each other)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
