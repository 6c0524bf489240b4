"""The dataset registry loads in bulk, normalises, and fails clearly on missing files."""

from __future__ import annotations

import pytest
import torch

from fedcond.config import DataConfig
from fedcond.data import DatasetNotFoundError, available_datasets, load_dataset


def test_digits_is_bundled_and_normalised(digits) -> None:
    assert digits.train.images.shape == (1437, 1, 8, 8)
    assert digits.test.images.shape == (360, 1, 8, 8)
    assert digits.train.images.dtype == torch.float32 and digits.train.labels.dtype == torch.int64
    assert abs(float(digits.train.images.mean())) < 0.05
    assert abs(float(digits.train.images.std()) - 1.0) < 0.05
    assert digits.train.class_counts().min() > 100
    pixels = digits.spec.denormalise(digits.train.images)
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0


def test_unknown_and_missing_datasets(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(DatasetNotFoundError, match="needs --data-dir"):
        load_dataset("mnist")
    with pytest.raises(DatasetNotFoundError, match=r"MNIST/raw/\{train,t10k\}"):
        load_dataset(DataConfig(dataset="mnist", data_dir=tmp_path))
    assert {"digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", "imagefolder"} <= set(
        available_datasets()
    )


def test_mnist_loads_in_bulk(mnist) -> None:
    assert mnist.train.images.shape == (60000, 1, 28, 28)
    assert mnist.test.images.shape == (10000, 1, 28, 28)
    assert abs(float(mnist.train.images.mean())) < 0.01
    assert mnist.train.class_counts().sum() == 60000


def test_imagefolder(tmp_path) -> None:
    from PIL import Image

    for split in ("train", "test"):
        for label, cls in enumerate(("cat", "dog")):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (6, 6), color=(40 * label + i, 10, 200)).save(folder / f"{i}.png")
    splits = load_dataset(DataConfig(dataset="imagefolder", data_dir=tmp_path))
    assert splits.train.images.shape == (6, 3, 6, 6)
    assert splits.spec.num_classes == 2
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="train"):
        load_dataset(DataConfig(dataset="imagefolder", data_dir=tmp_path / "empty"))
    # a test class the training split lacks would be dropped silently: refused instead
    (tmp_path / "test" / "fox").mkdir()
    Image.new("RGB", (6, 6)).save(tmp_path / "test" / "fox" / "0.png")
    with pytest.raises(ValueError, match="class folders that .* lacks: fox"):
        load_dataset(DataConfig(dataset="imagefolder", data_dir=tmp_path))


def test_imagefolder_with_class_folders_but_no_images_is_one_clear_error(tmp_path) -> None:
    for split in ("train", "test"):
        (tmp_path / split / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetNotFoundError, match=r"no images .* found under .*train/<class>/"):
        load_dataset(DataConfig(dataset="imagefolder", data_dir=tmp_path))


def test_a_failed_download_names_the_dataset_and_the_cause(tmp_path, monkeypatch) -> None:
    import urllib.error

    import torchvision.datasets as tvd

    def offline(**kwargs: object) -> object:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(tvd, "MNIST", offline)
    with pytest.raises(DatasetNotFoundError, match=r"'mnist': could not download it into .*URLError.*no route to host"):
        load_dataset(DataConfig(dataset="mnist", data_dir=tmp_path, download=True))
