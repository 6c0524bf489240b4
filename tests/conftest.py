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


#: CIFAR-10 as JPEG files in the ImageFolder layout (../shared/data/cifar10-jpeg)
CIFAR10_JPEG = SHARED_DATA / "cifar10-jpeg"


@pytest.fixture(scope="session")
def cifar10_slice(tmp_path_factory) -> Path:
    """A small CIFAR-10 ImageFolder tree: 12 train and 4 test JPEGs per class copied from the
    shared cifar10-jpeg folder (its first files in sorted order), or a skip naming the folder."""
    import shutil

    if not (CIFAR10_JPEG / "train" / "airplane").is_dir():
        pytest.skip(f"CIFAR-10 JPEG folder not found at {CIFAR10_JPEG} (FEDCOND_DATA_DIR: the folder holding it)")
    root = tmp_path_factory.mktemp("cifar10-slice")
    for split, per_class in (("train", 12), ("test", 4)):
        for class_dir in sorted(p for p in (CIFAR10_JPEG / split).iterdir() if p.is_dir()):
            target = root / split / class_dir.name
            target.mkdir(parents=True)
            for path in sorted(class_dir.glob("*.jpg"))[:per_class]:
                shutil.copyfile(path, target / path.name)
    return root
