"""SyntheticSet: round trip without pickle, and refusal of corrupted or inconsistent files."""

from __future__ import annotations

import json
import os
import zipfile
from typing import BinaryIO

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


class _RunsCodeWhenUnpickled:
    """A pickle payload that would set an environment variable if anything unpickled it."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, ("import os; os.environ['FEDCOND_TEST_PICKLE_RAN'] = '1'",)


def test_pickled_object_array_is_refused_without_unpickling(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("FEDCOND_TEST_PICKLE_RAN", raising=False)
    path = tmp_path / "evil.npz"
    evil = np.empty(1, dtype=object)
    evil[0] = _RunsCodeWhenUnpickled()
    np.savez(path, images=evil, labels=np.zeros(1, np.int64), meta=np.array("{}"))
    with pytest.raises(SyntheticSetError, match="pickle"):
        SyntheticSet.load(path)
    assert "FEDCOND_TEST_PICKLE_RAN" not in os.environ, "the payload was unpickled"


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.full((2, 1, 8, 8), np.nan, np.float32), np.zeros(2, np.int64), "NaN"),
        (np.zeros((2, 1, 8, 8), np.float32), np.array([0, 12]), "outside the valid range"),
        (np.zeros((2, 1, 8, 8), np.float64), np.zeros(2, np.int64), "float32"),
        (np.zeros((2, 8, 8), np.float32), np.zeros(2, np.int64), "N x C x H x W"),
        (np.zeros((2, 1, 8, 8), np.float32), np.zeros(3, np.int64), "labels of shape"),
        (np.full((2, 1, 8, 8), np.inf, np.float32), np.zeros(2, np.int64), "NaN or infinite"),
        (np.zeros((2, 1, 8, 8), np.float32), np.array([-1, 0]), r"labels span \[-1, 0\]"),
        (np.zeros((2, 1, 8, 8), np.float32), np.zeros(2, np.int32), "int64 labels, got float32 and int32"),
    ],
)
def test_inconsistent_contents_are_refused(tmp_path, images, labels, message) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, images=images, labels=labels, meta=np.array(json.dumps({"num_classes": 10})))
    with pytest.raises(SyntheticSetError, match=message):
        SyntheticSet.load(path)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("[1, 2]", "not a JSON object"),
        ("{not json", r"bad_meta.npz: member 'meta' is not valid JSON \(Expecting property name"),
    ],
)
def test_metadata_that_is_not_a_json_object_is_refused(tmp_path, meta: str, message: str) -> None:
    path = tmp_path / "bad_meta.npz"
    np.savez(path, images=np.zeros((2, 1, 8, 8), np.float32), labels=np.zeros(2, np.int64), meta=np.array(meta))
    with pytest.raises(SyntheticSetError, match=message):
        SyntheticSet.load(path)


def test_labels_beyond_the_callers_class_count_are_refused(tmp_path) -> None:
    path = SyntheticSet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 7]), {}).save(tmp_path / "s.npz")
    with pytest.raises(SyntheticSetError, match=r"outside the valid range \[0, 5\)"):
        SyntheticSet.load(path, num_classes=5)


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


def test_a_file_without_metadata_as_another_tool_writes_it_loads_with_empty_metadata(tmp_path) -> None:
    path = tmp_path / "other_tool.npz"
    images = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    np.savez(path, images=images, labels=np.array([0, 1, 2, 3], np.int64))
    loaded = SyntheticSet.load(path, num_classes=10, image_shape=(1, 8, 8))
    assert loaded.meta == {} and torch.equal(loaded.images, torch.from_numpy(images))
    np.savez(path, images=images)
    with pytest.raises(SyntheticSetError, match=r"missing \['labels'\]"):
        SyntheticSet.load(path)


def test_size_cap_validation() -> None:
    with pytest.raises(SyntheticSetError, match="exceed the cap"):
        _set(6).validate(max_images=4)


@pytest.mark.parametrize("num_classes", ["ten", 0, 2.5, True])
def test_hand_edited_num_classes_is_a_clear_error(tmp_path, num_classes) -> None:
    path = tmp_path / "edited.npz"
    np.savez(path, images=np.zeros((2, 1, 8, 8), np.float32), labels=np.zeros(2, np.int64),
             meta=np.array(json.dumps({"num_classes": num_classes})))
    with pytest.raises(SyntheticSetError, match="edited.npz: metadata key 'num_classes' must be a positive integer"):
        SyntheticSet.load(path)


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_a_file_declaring_a_huge_array_is_refused_before_reading_it(tmp_path) -> None:
    # 1 KB on disk, 153 GiB declared: np.load would try to allocate it (a MemoryError traceback)
    import io
    import json
    import zipfile

    from numpy.lib import format as npf

    header = io.BytesIO()
    npf.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**7, 1, 64, 64)})
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", header.getvalue() + b"\0" * 1024)
        archive.writestr("labels.npy", _npy(np.zeros(5, np.int64)))
        archive.writestr("meta.npy", _npy(np.array(json.dumps({"num_classes": 10}))))
    with pytest.raises(SyntheticSetError, match=r"declares 152\.6 GiB .* over the 2\.0 GiB limit"):
        SyntheticSet.load(path)
    # the cap is the caller's to set: a real set over a tiny cap is refused the same way
    small = SyntheticSet(torch.zeros(10, 1, 8, 8), torch.arange(10), {"num_classes": 10}).save(tmp_path / "s.npz")
    with pytest.raises(SyntheticSetError, match="over the"):
        SyntheticSet.load(small, max_bytes=1000)
    assert len(SyntheticSet.load(small)) == 10


def test_an_empty_set_or_one_made_for_another_class_count_is_refused(tmp_path) -> None:
    empty = SyntheticSet(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), {"num_classes": 10})
    with pytest.raises(SyntheticSetError, match="holds no images"):
        SyntheticSet.load(empty.save(tmp_path / "empty.npz"))
    three = SyntheticSet(torch.zeros(3, 1, 8, 8), torch.arange(3), {"num_classes": 3}).save(tmp_path / "three.npz")
    with pytest.raises(SyntheticSetError, match="made for 3 classes, 10 expected"):
        SyntheticSet.load(three, num_classes=10)
    lying = SyntheticSet(torch.zeros(3, 1, 8, 8), torch.arange(3), {"image_shape": [3, 32, 32]})
    with pytest.raises(SyntheticSetError, match=r"metadata says images are \[3, 32, 32\]"):
        SyntheticSet.load(lying.save(tmp_path / "lying.npz"))


def test_the_largest_valid_label_is_one_below_the_class_count() -> None:
    images = torch.zeros(2, 1, 8, 8)
    assert len(SyntheticSet(images, torch.tensor([0, 9]), {"num_classes": 10})) == 2
    with pytest.raises(SyntheticSetError, match=r"labels span \[0, 10\], outside the valid range \[0, 10\)"):
        SyntheticSet(images, torch.tensor([0, 10]), {"num_classes": 10})
    with pytest.raises(SyntheticSetError, match=r"outside the valid range \[0, 9\)"):
        SyntheticSet(images, torch.tensor([0, 9]), {}).validate(num_classes=9)


def test_the_image_cap_allows_exactly_the_cap() -> None:
    _set(4).validate(max_images=4)
    with pytest.raises(SyntheticSetError, match="5 images exceed the cap of 4"):
        _set(5).validate(max_images=4)


def test_num_classes_and_class_counts_follow_the_metadata_when_the_last_classes_are_empty() -> None:
    synthetic = SyntheticSet(torch.zeros(3, 1, 8, 8), torch.tensor([0, 1, 1]), {"num_classes": 10})
    assert synthetic.num_classes == 10
    assert synthetic.class_counts().tolist() == [1, 2] + [0] * 8
    assert SyntheticSet(torch.zeros(3, 1, 8, 8), torch.tensor([0, 4, 1]), {}).num_classes == 5


def test_save_adds_the_suffix_creates_folders_and_leaves_no_temporary_file(tmp_path) -> None:
    original = _set()
    path = original.save(tmp_path / "run" / "syn")
    assert path == tmp_path / "run" / "syn.npz"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["syn.npz"]
    assert torch.equal(SyntheticSet.load(path).images, original.images)


def test_a_failed_save_keeps_the_previous_file_intact(tmp_path, monkeypatch) -> None:
    path = _set().save(tmp_path / "syn.npz")
    before = path.read_bytes()

    def interrupted(fh: BinaryIO, **arrays: object) -> None:
        fh.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(OSError, match="disk full"):
        _set(6).save(path)
    assert path.read_bytes() == before
    assert len(SyntheticSet.load(path)) == 4


def test_metadata_round_trips_exactly_and_to_keeps_it(tmp_path) -> None:
    meta = {"dataset": "digits", "num_classes": 10, "mean": [0.305], "std": [0.3769], "ipc": 2,
            "method": "dm", "seed": 7, "epsilon": 3.5, "delta": 1e-5, "skipped_classes": [3]}
    original = SyntheticSet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), meta)
    loaded = SyntheticSet.load(original.save(tmp_path / "m.npz"))
    assert loaded.meta == {**meta, "format_version": 1}
    assert loaded.images.dtype == torch.float32 and loaded.labels.dtype == torch.int64
    moved = loaded.to("cpu")
    assert moved.meta == loaded.meta and moved.meta is not loaded.meta
    assert torch.equal(moved.images, loaded.images) and torch.equal(moved.labels, loaded.labels)


def _write(path, meta: object) -> None:
    np.savez(path, images=np.zeros((2, 1, 8, 8), np.float32), labels=np.zeros(2, np.int64),
             meta=np.array(json.dumps(meta)))


def test_an_unknown_format_version_is_refused_naming_the_file_and_the_version(tmp_path) -> None:
    path = tmp_path / "future.npz"
    _write(path, {"num_classes": 10, "format_version": 99})
    with pytest.raises(SyntheticSetError, match=r"future.npz: format_version 99 is not one this fedcond reads "
                                                r"\(it reads 1\)"):
        SyntheticSet.load(path)
    _write(path, {"num_classes": 10, "format_version": 1})
    assert SyntheticSet.load(path).meta["format_version"] == 1
    _write(path, {"num_classes": 10})  # a hand-made file without a version is read as version 1
    assert len(SyntheticSet.load(path)) == 2


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"mean": "x"}, "metadata key 'mean' must be a list of finite numbers, got 'x'"),
        ({"std": [0.0]}, "metadata key 'std' must be a list of positive numbers, got [0.0]"),
        ({"ipc": "abc"}, "metadata key 'ipc' must be a positive integer, got 'abc'"),
        ({"image_shape": [1, 8]}, "metadata key 'image_shape' must be three positive integers"),
        ({"factor": 0}, "metadata key 'factor' must be a positive integer, got 0"),
        ({"iterations": -1}, "metadata key 'iterations' must be an integer >= 0, got -1"),
        ({"epsilon": "inf"}, "metadata key 'epsilon' must be a finite number >= 0"),
        ({"delta": 2}, "metadata key 'delta' must be a number in [0, 1], got 2"),
        ({"format_version": "1"}, "metadata key 'format_version' must be a positive integer, got '1'"),
        ({"dataset": 3}, "metadata key 'dataset' must be a dataset name, got 3"),
    ],
)
def test_a_bad_metadata_value_is_named_by_file_and_key(tmp_path, meta: dict, message: str) -> None:
    path = tmp_path / "edited.npz"
    _write(path, {"num_classes": 10, **meta})
    with pytest.raises(SyntheticSetError) as exc:
        SyntheticSet.load(path)
    assert str(exc.value) == f"{path}: {message}" or str(exc.value).startswith(f"{path}: {message}")


@pytest.mark.parametrize("meta", [np.array(["{}", "{}"]), np.frombuffer(b"{}", np.uint8)])
def test_a_meta_member_that_is_not_one_json_string_is_named(tmp_path, meta: np.ndarray) -> None:
    path = tmp_path / "odd.npz"
    np.savez(path, images=np.zeros((2, 1, 8, 8), np.float32), labels=np.zeros(2, np.int64), meta=meta)
    with pytest.raises(SyntheticSetError, match=r"odd.npz: member 'meta' must hold one JSON string, got a"):
        SyntheticSet.load(path)
