"""Shared fixtures: the bundled digits data and, when present, MNIST from ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fedcond.config import DataConfig
from fedcond.data import DatasetSplits, load_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDCOND_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def digits() -> DatasetSplits:
    """scikit-learn's bundled handwritten digits (8x8, 1437 train / 360 test)."""
    return load_dataset("digits")


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The torchvision-layout root holding MNIST, or a skip saying where it was looked for."""
    if not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"MNIST not found under {SHARED_DATA} (set FEDCOND_DATA_DIR to a torchvision-layout root)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mnist(mnist_root: Path) -> DatasetSplits:
    return load_dataset(DataConfig(dataset="mnist", data_dir=mnist_root))
