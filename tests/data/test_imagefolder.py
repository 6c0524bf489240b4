"""ImageFolder trees: CIFAR-10's JPEG folder as a first-class dataset, class names, and bad input
(corrupt or non-image files, hidden files, empty classes, missing splits, mixed sizes and modes)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcond.config import DataConfig
from fedcond.data import DatasetNotFoundError, ImageFolderError, get_spec, load_dataset
from fedcond.data.registry import CIFAR10_CLASSES, DatasetSpec


def _tree(root: Path, classes: dict[str, int], *, size: tuple[int, int] = (6, 6), per_class: int = 2) -> Path:
    """``root/{train,test}/<class>/<i>.png``: RGB images of one colour value per class."""
    from PIL import Image

    for split in ("train", "test"):
        for cls, value in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", size, color=(value, 255 - value, i)).save(folder / f"{i}.png")
    return root


def _load(name: str, root: Path, **kwargs):  # noqa: ANN202
    return load_dataset(DataConfig(dataset=name, data_dir=root), **kwargs)


# ------------------------------------------------------------------------------------ CIFAR-10
def test_the_cifar10_jpeg_slice_reads_as_imagefolder_with_its_class_names(cifar10_slice) -> None:
    splits = _load("imagefolder", cifar10_slice)
    assert splits.train.images.shape == (120, 3, 32, 32) and splits.test.images.shape == (40, 3, 32, 32)
    assert splits.spec.class_names == CIFAR10_CLASSES
    assert splits.train.class_counts().tolist() == [12] * 10 and splits.test.class_counts().tolist() == [4] * 10
    assert splits.spec.class_name(3) == "cat"
    # imagefolder normalises with the training split's own statistics
    assert abs(float(splits.train.images.mean())) < 1e-4
    assert torch.allclose(splits.train.images.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)


def test_cifar10_reads_the_jpeg_layout_with_cifar10s_spec_and_normalisation(cifar10_slice) -> None:
    as_cifar = _load("cifar10", cifar10_slice)
    as_folder = _load("imagefolder", cifar10_slice)
    assert as_cifar.spec == get_spec("cifar10") and as_cifar.spec.name == "cifar10"
    assert as_cifar.spec.mean == (0.4914, 0.4822, 0.4465) and as_cifar.spec.std == (0.2023, 0.1994, 0.2010)
    assert as_cifar.spec.class_names == CIFAR10_CLASSES
    # the same pixels and labels, only normalised differently
    torch.testing.assert_close(
        as_cifar.spec.denormalise(as_cifar.train.images, clamp=False),
        as_folder.spec.denormalise(as_folder.train.images, clamp=False),
        atol=1e-5,
        rtol=0,
    )
    assert torch.equal(as_cifar.test.labels, as_folder.test.labels)


def test_cifar10_without_either_layout_names_both(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-batches-py.*ImageFolder layout .*train/<class>") as info:
        _load("cifar10", tmp_path)
    assert "airplane" in str(info.value)
    with pytest.raises(DatasetNotFoundError, match="ImageFolder layout train/<class>/"):
        load_dataset("cifar10")


def test_cifar10_refuses_a_folder_of_other_classes_or_shapes(tmp_path) -> None:
    _tree(tmp_path / "pets", {"cat": 10, "dog": 200}, size=(32, 32))
    with pytest.raises(ImageFolderError, match="class folders cat, dog, not CIFAR-10's .*--dataset imagefolder"):
        _load("cifar10", tmp_path / "pets")
    _tree(tmp_path / "small", dict.fromkeys(CIFAR10_CLASSES, 100), size=(16, 16), per_class=1)
    with pytest.raises(ImageFolderError, match=r"are 3x16x16 .* CIFAR-10's are 3x32x32"):
        _load("cifar10", tmp_path / "small")


# ---------------------------------------------------------------------------------- class names
def test_every_registered_dataset_names_its_classes_and_names_are_display_only() -> None:
    assert get_spec("digits").class_names == tuple("0123456789")
    assert get_spec("fashion-mnist").class_name(9) == "Ankle boot"
    assert get_spec("cifar10").class_name(0) == "airplane"
    unnamed = DatasetSpec("x", 3, 1, (2, 2), (0.5,), (0.5,))
    assert [unnamed.class_name(k) for k in range(3)] == ["0", "1", "2"]
    named = DatasetSpec("x", 3, 1, (2, 2), (0.5,), (0.5,), ("a", "b", "c"))
    assert named == unnamed and named.class_name(2) == "c"
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        DatasetSpec("x", 3, 1, (2, 2), (0.5,), (0.5,), ("a", "b"))


# ------------------------------------------------------------------------------------ bad input
def test_a_corrupt_jpeg_is_one_error_naming_the_file(tmp_path) -> None:
    root = _tree(tmp_path, {"cat": 10, "dog": 200})
    from PIL import Image

    good = tmp_path / "good.jpg"
    Image.new("RGB", (6, 6), color=(1, 2, 3)).save(good)
    broken = root / "train" / "dog" / "broken.jpg"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # truncated
    with pytest.raises(ImageFolderError, match=r"broken\.jpg is not a readable image .*remove or replace"):
        _load("imagefolder", root)


@pytest.mark.parametrize("name,content", [("README.png", b"# notes, not an image\n"), ("empty.jpg", b"")])
def test_a_file_with_an_image_suffix_that_is_not_an_image_is_named(tmp_path, name, content) -> None:
    root = _tree(tmp_path, {"cat": 10, "dog": 200})
    (root / "test" / "cat" / name).write_bytes(content)
    with pytest.raises(ImageFolderError, match=f"{name} is not a readable image"):
        _load("imagefolder", root)


def test_hidden_files_and_folders_are_skipped_and_other_files_warned_about(tmp_path, caplog) -> None:
    root = _tree(tmp_path, {"cat": 10, "dog": 200})
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "train" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (root / "train" / "dog" / ".ipynb_checkpoints").mkdir()
    (root / "train" / "dog" / ".ipynb_checkpoints" / "0.png").write_bytes(b"garbage")
    (root / "train" / ".cache").mkdir()  # a hidden folder beside the classes is no class
    (root / "test" / "dog" / "labels.csv").write_text("file,label\n")
    with caplog.at_level("WARNING", logger="fedcond.data.imagefolder"):
        splits = _load("imagefolder", root)
    assert splits.spec.class_names == ("cat", "dog")
    assert splits.train.class_counts().tolist() == [2, 2] and len(splits.test) == 4
    assert "skipped 1 file(s)" in caplog.text and "labels.csv" in caplog.text
    assert ".DS_Store" not in caplog.text


def test_a_training_class_holding_only_hidden_files_is_refused_by_name(tmp_path) -> None:
    root = _tree(tmp_path, {"cat": 10})
    (root / "train" / "dog").mkdir()
    (root / "train" / "dog" / ".DS_Store").write_bytes(b"\x00")
    with pytest.raises(DatasetNotFoundError, match=r"for class\(es\) dog"):
        _load("imagefolder", root)


def test_a_test_class_without_images_is_a_warning_naming_it(tmp_path, caplog) -> None:
    root = _tree(tmp_path, {"cat": 10, "dog": 200})
    shutil.rmtree(root / "test" / "dog")
    (root / "test" / "dog").mkdir()
    with caplog.at_level("WARNING", logger="fedcond.data.imagefolder"):
        splits = _load("imagefolder", root)
    assert splits.test.labels.tolist() == [0, 0]
    assert "no images of class(es) dog" in caplog.text


@pytest.mark.parametrize("missing", ["train", "test"])
def test_a_missing_split_is_named(tmp_path, missing) -> None:
    root = _tree(tmp_path, {"cat": 10})
    shutil.rmtree(root / missing)
    with pytest.raises(DatasetNotFoundError, match=f"{missing} missing"):
        _load("imagefolder", root)


def test_pointing_at_a_split_folder_says_to_point_at_its_parent(tmp_path) -> None:
    root = _tree(tmp_path, {"cat": 10})
    with pytest.raises(DatasetNotFoundError, match="point at the folder above it"):
        _load("imagefolder", root / "train")
    with pytest.raises(DatasetNotFoundError, match="point at the folder above it"):
        _load("imagefolder", root / "test")  # its class folders, whatever the folder's name
    with pytest.raises(DatasetNotFoundError, match="no-such-folder is not a folder"):
        _load("imagefolder", tmp_path / "no-such-folder")


def test_mixed_sizes_name_the_odd_image_and_an_example_of_the_common_size(tmp_path) -> None:
    from PIL import Image

    root = _tree(tmp_path, {"cat": 10, "dog": 200})
    Image.new("RGB", (8, 5)).save(root / "test" / "dog" / "wide.png")
    with pytest.raises(ImageFolderError, match=r"wide\.png is 8x5 pixels but .*0\.png \(and most images\) 6x6"):
        _load("imagefolder", root)


def test_mixed_modes_are_read_as_rgb_without_loss(tmp_path) -> None:
    from PIL import Image

    root = _tree(tmp_path, {"cat": 10, "dog": 200})
    folder = root / "train" / "cat"
    Image.new("L", (6, 6), color=77).save(folder / "grey.png")
    Image.new("RGBA", (6, 6), color=(9, 99, 199, 0)).save(folder / "alpha.png")
    Image.new("RGB", (6, 6), color=(51, 102, 153)).convert("P").save(folder / "palette.png")  # a web-palette colour
    splits = _load("imagefolder", root)
    pixels = (splits.spec.denormalise(splits.train.images) * 255).round()[:, :, 0, 0]
    names = ["0.png", "1.png", "alpha.png", "grey.png", "palette.png"]  # sorted file order
    by_name = dict(zip(names, pixels[: len(names)].tolist(), strict=True))
    assert by_name["grey.png"] == [77, 77, 77]
    assert by_name["alpha.png"] == [9, 99, 199]  # alpha dropped, colour kept
    assert by_name["palette.png"] == [51, 102, 153]


@pytest.mark.parametrize("mode", ["LA", "P"])
def test_grey_images_with_alpha_or_a_grey_palette_read_as_one_channel(tmp_path, mode) -> None:
    from PIL import Image

    for split in ("train", "test"):
        for cls, value in (("zero", 30), ("one", 200)):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            grey = Image.new("L", (6, 6), color=value)
            (grey.convert("LA") if mode == "LA" else grey.convert("P")).save(folder / "0.png")
    splits = _load("imagefolder", tmp_path)
    assert splits.spec.channels == 1
    assert (splits.spec.denormalise(splits.train.images) * 255).round()[:, 0, 0, 0].tolist() == [200, 30]


def test_a_tree_of_one_class_is_refused_by_name(tmp_path) -> None:
    root = _tree(tmp_path, {"cat": 10})
    with pytest.raises(ImageFolderError, match=r"holds one class folder \(cat\); classification needs at least two"):
        _load("imagefolder", root)


# ------------------------------------------------------------------------------ progress, threads
def test_progress_reaches_the_total_and_threads_decode_exactly_like_one_thread(tmp_path, monkeypatch) -> None:
    import fedcond.data.imagefolder as imagefolder

    rng = np.random.default_rng(0)
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b", "c"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(7):
                Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    calls: list[tuple[int, int]] = []
    single = _load("imagefolder", tmp_path, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (42, 42) and all(total == 42 for _, total in calls)
    assert [done for done, _ in calls] == sorted({done for done, _ in calls})
    monkeypatch.setattr(imagefolder, "_THREADED_FROM", 1)
    threaded = _load("imagefolder", tmp_path)
    assert torch.equal(single.train.images, threaded.train.images)
    assert torch.equal(single.test.labels, threaded.test.labels)


# ------------------------------------------------------------------------------------------ cache
@pytest.fixture
def cache_everything(tmp_path, monkeypatch) -> Path:
    """Cache every tree (not only large ones) in a folder of this test's own."""
    import fedcond.data.imagefolder as imagefolder

    monkeypatch.setattr(imagefolder, "CACHE_FROM", 1)
    monkeypatch.setenv("FEDCOND_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _refuse_decoding(monkeypatch) -> None:
    import fedcond.data.imagefolder as imagefolder

    def no_decoding(path: Path) -> np.ndarray:
        raise AssertionError(f"decoded {path} although the cache holds it")

    monkeypatch.setattr(imagefolder, "_decode", no_decoding)


def test_a_decoded_tree_is_cached_without_pickle_and_read_back_identically(tmp_path, cache_everything, monkeypatch):
    root = _tree(tmp_path / "data", {"cat": 10, "dog": 200})
    first = _load("imagefolder", root)
    (entry,) = cache_everything.glob("imagefolder-*.npz")
    with np.load(entry, allow_pickle=False) as archive:  # plain arrays only
        assert archive["train_pixels"].dtype == np.uint8 and archive["classes"].tolist() == ["cat", "dog"]
    _refuse_decoding(monkeypatch)
    again = _load("imagefolder", root)
    assert torch.equal(first.train.images, again.train.images) and torch.equal(first.test.labels, again.test.labels)
    assert again.spec.class_names == ("cat", "dog") and again.spec.mean == first.spec.mean


def test_a_changed_image_or_a_new_one_makes_a_new_cache_entry(tmp_path, cache_everything) -> None:
    import os

    from PIL import Image

    root = _tree(tmp_path / "data", {"cat": 10, "dog": 200})
    _load("imagefolder", root)
    Image.new("RGB", (6, 6), color=(0, 0, 0)).save(root / "train" / "cat" / "0.png")  # replaced in place
    os.utime(root / "train" / "cat" / "0.png", ns=(1, 1))
    changed = _load("imagefolder", root)
    assert float(changed.spec.denormalise(changed.train.images)[0].max()) == 0.0  # the new black image
    Image.new("RGB", (6, 6)).save(root / "test" / "dog" / "9.png")
    assert len(_load("imagefolder", root).test) == 5
    assert len(list(cache_everything.glob("imagefolder-*.npz"))) == 3


def test_an_unreadable_cache_is_ignored_with_a_warning(tmp_path, cache_everything, caplog) -> None:
    root = _tree(tmp_path / "data", {"cat": 10, "dog": 200})
    first = _load("imagefolder", root)
    (entry,) = cache_everything.glob("imagefolder-*.npz")
    entry.write_bytes(b"PK\x03\x04 not a zip archive")
    with caplog.at_level("WARNING", logger="fedcond.data.imagefolder"):
        again = _load("imagefolder", root)
    assert "ignoring the unreadable cache" in caplog.text
    assert torch.equal(first.train.images, again.train.images)


def test_the_cache_can_be_turned_off_and_small_trees_are_never_cached(tmp_path, monkeypatch) -> None:
    import fedcond.data.imagefolder as imagefolder
    from fedcond.data.registry import image_cache_dir

    root = _tree(tmp_path / "data", {"cat": 10, "dog": 200})
    monkeypatch.setenv("FEDCOND_CACHE_DIR", str(tmp_path / "cache"))
    _load("imagefolder", root)  # 8 images: below CACHE_FROM
    assert not (tmp_path / "cache").exists()
    monkeypatch.setattr(imagefolder, "CACHE_FROM", 1)
    monkeypatch.setenv("FEDCOND_CACHE_DIR", "off")
    assert image_cache_dir() is None
    _load("imagefolder", root)
    assert not (tmp_path / "cache").exists()
    monkeypatch.delenv("FEDCOND_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert image_cache_dir() == tmp_path / "xdg" / "fedcond"
