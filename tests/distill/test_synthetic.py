"""SyntheticSet: round trip without pickle, and refusal of corrupted or inconsistent files."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from fedcond.distill.synthetic import SyntheticSet, SyntheticSetError


def _set(n: int = 4) -> SyntheticSet:
    images = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(n) % 2
    return SyntheticSet(images, labels, {"dataset": "digits", "num_classes": 10, "ipc": 2})


def test_round_trip(tmp_path) -> None:
    original = _set()
    path = original.save(tmp_path / "syn.npz")
    loaded = SyntheticSet.load(path, num_classes=10, image_shape=(1, 8, 8))
    assert torch.equal(loaded.images, original.images)
    assert torch.equal(loaded.labels, original.labels)
    assert loaded.meta["ipc"] == 2 and loaded.meta["format_version"] == 1


def test_truncated_file_is_refused(tmp_path) -> None:
    path = _set().save(tmp_path / "syn.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SyntheticSetError, match="truncated|corrupted"):
        SyntheticSet.load(path)


def test_pickled_object_array_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, images=np.array([object()], dtype=object), labels=np.zeros(1, np.int64), meta=np.array("{}"))
    with pytest.raises(SyntheticSetError):
        SyntheticSet.load(path)


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.full((2, 1, 8, 8), np.nan, np.float32), np.zeros(2, np.int64), "NaN"),
        (np.zeros((2, 1, 8, 8), np.float32), np.array([0, 12]), "outside the valid range"),
        (np.zeros((2, 1, 8, 8), np.float64), np.zeros(2, np.int64), "float32"),
        (np.zeros((2, 8, 8), np.float32), np.zeros(2, np.int64), "N x C x H x W"),
        (np.zeros((2, 1, 8, 8), np.float32), np.zeros(3, np.int64), "labels of shape"),
    ],
)
def test_inconsistent_contents_are_refused(tmp_path, images, labels, message) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, images=images, labels=labels, meta=np.array(json.dumps({"num_classes": 10})))
    with pytest.raises(SyntheticSetError, match=message):
        SyntheticSet.load(path)


def test_shape_mismatch_with_dataset(tmp_path) -> None:
    path = _set().save(tmp_path / "syn.npz")
    with pytest.raises(SyntheticSetError, match="dataset's images"):
        SyntheticSet.load(path, image_shape=(1, 28, 28))


def test_missing_member_and_missing_file(tmp_path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, x=np.zeros(2))
    with pytest.raises(SyntheticSetError, match="missing"):
        SyntheticSet.load(path)
    with pytest.raises(SyntheticSetError, match="does not exist"):
        SyntheticSet.load(tmp_path / "nope.npz")
    assert zipfile.is_zipfile(path)


def test_size_cap_validation() -> None:
    with pytest.raises(SyntheticSetError, match="exceed the cap"):
        _set(6).validate(max_images=4)


@pytest.mark.parametrize("num_classes", ["ten", 0, 2.5, True])
def test_hand_edited_num_classes_is_a_clear_error(tmp_path, num_classes) -> None:
    path = tmp_path / "edited.npz"
    np.savez(path, images=np.zeros((2, 1, 8, 8), np.float32), labels=np.zeros(2, np.int64),
             meta=np.array(json.dumps({"num_classes": num_classes})))
    with pytest.raises(SyntheticSetError, match="num_classes must be a positive integer"):
        SyntheticSet.load(path)
