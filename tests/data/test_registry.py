"""The dataset registry loads in bulk, normalises, and fails clearly on missing files."""

from __future__ import annotations

import numpy as np
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
    with pytest.raises(DatasetNotFoundError, match=r"no images .* under .*train/<class>/ for class\(es\) cat"):
        load_dataset(DataConfig(dataset="imagefolder", data_dir=tmp_path))


def test_imagefolder_refuses_a_training_class_without_images(tmp_path) -> None:
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            if not (split == "train" and cls == "dog"):
                Image.new("L", (4, 4)).save(tmp_path / split / cls / "0.png")
    # "dog" would be a label nothing teaches (its test images scored against an untrainable class)
    with pytest.raises(DatasetNotFoundError, match="for class\\(es\\) dog"):
        load_dataset(DataConfig(dataset="imagefolder", data_dir=tmp_path))


def test_imagefolder_reads_every_image_format_nested_folders_and_mixed_colour_modes(tmp_path, caplog) -> None:
    # the colour mode comes from every file, not the first only (RGB images would turn grey
    # without a word), and .pgm/.ppm and images in subfolders are read, not skipped
    from PIL import Image

    for split in ("train", "test"):
        a, b = tmp_path / split / "a", tmp_path / split / "b" / "batch1"
        a.mkdir(parents=True)
        b.mkdir(parents=True)
        Image.new("L", (4, 4), color=50).save(a / "0.png")  # first file in sorted order: greyscale
        Image.new("RGB", (4, 4), color=(250, 0, 0)).save(a / "1.ppm")
        Image.new("L", (4, 4), color=200).save(b / "0.pgm")
    (tmp_path / "train" / "a" / "README.txt").write_text("not an image")
    with caplog.at_level("WARNING", logger="fedcond.data.registry"):
        splits = load_dataset(DataConfig(dataset="imagefolder", data_dir=tmp_path))
    assert "skipped 1 file(s)" in caplog.text
    assert splits.train.images.shape == (3, 3, 4, 4) and splits.train.labels.tolist() == [0, 0, 1]
    pixels = splits.spec.denormalise(splits.train.images)
    red = pixels[1, :, 0, 0]
    assert red[0] > 0.95 and red[1] < 0.05 and red[2] < 0.05  # the colour survived
    assert torch.allclose(pixels[0, :, 0, 0], torch.full((3,), 50 / 255), atol=1e-5)  # grey replicated


def test_download_without_a_data_dir_says_where_it_is_missing() -> None:
    with pytest.raises(DatasetNotFoundError, match="--download needs --data-dir DIR"):
        load_dataset(DataConfig(dataset="mnist", download=True))


def test_imagefolder_has_no_static_spec_and_says_so() -> None:
    from fedcond.data import get_spec

    with pytest.raises(ValueError, match="imagefolder has no static spec"):
        get_spec("imagefolder")


def test_a_failed_download_names_the_dataset_and_the_cause(tmp_path, monkeypatch) -> None:
    import urllib.error

    import torchvision.datasets as tvd

    def offline(**kwargs: object) -> object:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(tvd, "MNIST", offline)
    with pytest.raises(DatasetNotFoundError, match=r"'mnist': could not download it into .*URLError.*no route to host"):
        load_dataset(DataConfig(dataset="mnist", data_dir=tmp_path, download=True))


def test_imagefolder_rescales_16_bit_greyscale_instead_of_clipping_it(tmp_path) -> None:
    """Pillow's convert("L") clips 16-bit values above 255 to white: a scan would load blank."""
    from PIL import Image

    values = np.array([[0, 16384, 32768, 65535]] * 4, dtype=np.uint16)
    for split in ("train", "test"):
        for label, cls in enumerate(("a", "b")):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            Image.fromarray(values if label == 0 else values[:, ::-1].copy()).save(folder / "0.png")
    with Image.open(tmp_path / "train" / "a" / "0.png") as img:
        assert img.mode in ("I;16", "I")  # really read back as 16-bit
    splits = load_dataset(DataConfig(dataset="imagefolder", data_dir=tmp_path))
    spec = splits.spec
    pixels = splits.train.images[0, 0] * spec.std[0] + spec.mean[0]
    assert torch.allclose(pixels[0], torch.tensor([0.0, 0.25, 0.5, 1.0]), atol=1 / 255)
    Image.fromarray(np.zeros((4, 4), dtype=np.float32)).save(tmp_path / "train" / "a" / "1.tiff")
    with pytest.raises(ValueError, match=r"1.tiff: floating-point images \(mode F\)"):
        load_dataset(DataConfig(dataset="imagefolder", data_dir=tmp_path))


def test_array_dataset_refuses_mismatched_images_and_labels(digits) -> None:
    from fedcond.data.registry import ArrayDataset

    images, labels = digits.train.images, digits.train.labels
    with pytest.raises(ValueError, match="9 labels for 10 images"):
        ArrayDataset(images[:10], labels[:9], digits.spec)
    with pytest.raises(ValueError, match="expected N x"):
        ArrayDataset(images[:10, :, :4], labels[:10], digits.spec)
    assert len(ArrayDataset(images[:10], labels[:10], digits.spec)) == 10


def test_digits_split_is_fixed_and_stratified() -> None:
    a, b = load_dataset("digits"), load_dataset("Digits")  # names are case-insensitive
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    train, test = a.train.class_counts(), a.test.class_counts()
    total = train + test
    # every class keeps its share: a fifth of each class is held out
    assert torch.all((test.double() - 0.2 * total.double()).abs() <= 1)
    # pixels are the 17 grey levels of the scans (k / 16) in the normalised space
    levels = a.spec.denormalise(torch.cat([a.train.images, a.test.images]), clamp=False) * 16
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
    assert float(levels.min()) == pytest.approx(0.0, abs=1e-4) and float(levels.max()) == pytest.approx(16.0, abs=1e-4)


def test_normalise_and_denormalise_are_inverse_and_clamping_is_optional() -> None:
    from fedcond.data import get_spec

    spec = get_spec("cifar10")
    pixels = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    normalised = spec.normalise(pixels)
    torch.testing.assert_close(normalised[:, 0], (pixels[:, 0] - 0.4914) / 0.2023)
    torch.testing.assert_close(spec.denormalise(normalised), pixels)
    outside = spec.normalise(torch.tensor([-0.5, 1.5]).view(1, 1, 1, 2).expand(1, 3, 1, 2))
    torch.testing.assert_close(spec.denormalise(outside)[0, :, 0], torch.tensor([[0.0, 1.0]] * 3))
    torch.testing.assert_close(spec.denormalise(outside, clamp=False)[0, :, 0], torch.tensor([[-0.5, 1.5]] * 3))


def test_subset_keeps_images_and_labels_together_and_class_counts_span_every_class(digits) -> None:
    picked = [17, 3, 250, 3]
    subset = digits.train.subset(picked)
    assert torch.equal(subset.images, digits.train.images[picked])
    assert torch.equal(subset.labels, digits.train.labels[picked])
    only_zeros = digits.train.subset(torch.nonzero(digits.train.labels == 0).flatten())
    assert only_zeros.class_counts().tolist() == [len(only_zeros)] + [0] * 9


def test_get_spec_refuses_an_unknown_name() -> None:
    from fedcond.data import get_spec

    assert get_spec("svhn").image_shape == (3, 32, 32)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; choose one of"):
        get_spec("imagenet")


def test_imagefolder_labels_follow_sorted_class_names_and_statistics_come_from_train(tmp_path) -> None:
    from PIL import Image

    grey = {"zebra": 200, "ant": 20, "moth": 110}  # created out of alphabetical order
    for split in ("train", "test"):
        for cls, value in grey.items():
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            Image.new("L", (4, 4), color=value).save(folder / "0.png")
            if split == "train":
                Image.new("L", (4, 4), color=value + 10).save(folder / "1.png")
    splits = load_dataset(DataConfig(dataset="imagefolder", data_dir=tmp_path))
    assert splits.test.labels.tolist() == [0, 1, 2]
    pixels = splits.spec.denormalise(splits.test.images)[:, 0, 0, 0]
    torch.testing.assert_close(pixels, torch.tensor([20.0, 110.0, 200.0]) / 255, atol=1e-5, rtol=0)
    train_pixels = np.array([20, 30, 110, 120, 200, 210], dtype=np.float64) / 255
    assert splits.spec.mean[0] == pytest.approx(train_pixels.mean(), rel=1e-4)
    assert splits.spec.std[0] == pytest.approx(train_pixels.std(), rel=1e-4)
    assert abs(float(splits.train.images.mean())) < 1e-5


@pytest.mark.parametrize("download", [False, True])
def test_imagefolder_without_a_data_dir_never_suggests_a_download(download: bool) -> None:
    with pytest.raises(DatasetNotFoundError, match="train/ and test/, each with one sub-folder") as info:
        load_dataset(DataConfig(dataset="imagefolder", download=download))
    assert "--download" not in str(info.value)
