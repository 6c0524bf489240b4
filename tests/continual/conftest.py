"""Shared fixtures: a small split-digits stream and tiny DM settings (tests stay fast on 2 cores)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from fedcond.config import ContinualConfig, DistillConfig
from fedcond.continual import SplitBenchmark, make_split_benchmark

#: DM settings small enough for tests; quality is not what these tests check
TINY_DM = DistillConfig(iterations=3, batch_real=16, dsa=True)


@pytest.fixture(scope="session", autouse=True)
def _single_thread() -> Iterator[None]:
    """One intra-op thread: tiny 8x8 convolutions are many times faster than with two
    threads on a shared 2-core machine (oversubscription), and results do not change."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits_stream() -> SplitBenchmark:
    return make_split_benchmark("split-digits", seed=0, train_per_class=30, test_per_class=20)


def tiny_config(**overrides: object) -> ContinualConfig:
    base = dict(
        benchmark="split-digits",
        replay="distilled",
        memory_per_class=2,
        epochs=1,
        batch_size=32,
        gdumb_epochs=5,
        train_per_class=30,
        test_per_class=20,
        distill=TINY_DM,
    )
    base.update(overrides)
    return ContinualConfig(**base)  # type: ignore[arg-type]
