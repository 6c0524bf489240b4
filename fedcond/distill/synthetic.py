"""The synthetic set: images, labels and metadata, saved and loaded without pickle.

The file format is a NumPy ``.npz`` archive with three members: ``images`` (float32
``N x C x H x W``), ``labels`` (int64 ``N``) and ``meta`` (a UTF-8 JSON string). Loading uses
``allow_pickle=False``, so a file can never execute code, and validates shapes, dtypes,
finiteness and the label range before anything is returned.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedcond.distill.formation import check_factor, decode_formation, expand_labels

__all__ = ["FORMAT_VERSION", "SyntheticSet", "SyntheticSetError", "dataset_meta"]

FORMAT_VERSION = 1


def dataset_meta(spec: Any) -> dict[str, Any]:
    """The dataset part of a set's ``meta``: name, class count, image shape and normalisation.

    ``spec`` is a :class:`~fedcond.data.registry.DatasetSpec`; :meth:`SyntheticSet.load` and the
    audit check a set against these values.
    """
    return {
        "dataset": spec.name,
        "num_classes": spec.num_classes,
        "image_shape": list(spec.image_shape),
        "mean": list(spec.mean),
        "std": list(spec.std),
    }


class SyntheticSetError(ValueError):
    """A synthetic set (in memory or on disk) is malformed; the message says how."""


def _integer(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _numbers(value: Any, *, positive: bool = False) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        and (not positive or all(v > 0 for v in value))
    )


#: What each metadata key the code reads must hold when a file gives it: the rule and its
#: description. A set's other keys are kept as they are.
_META_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "format_version": (lambda v: _integer(v, 1), "a positive integer"),
    "dataset": (lambda v: isinstance(v, str) and bool(v), "a dataset name"),
    "num_classes": (lambda v: _integer(v, 1), "a positive integer"),
    "image_shape": (lambda v: isinstance(v, list) and len(v) == 3 and all(_integer(d, 1) for d in v),
                    "three positive integers [C, H, W]"),
    "mean": (_numbers, "a list of finite numbers"),
    "std": (lambda v: _numbers(v, positive=True), "a list of positive numbers"),
    "ipc": (lambda v: _integer(v, 1), "a positive integer"),
    "factor": (lambda v: _integer(v, 1), "a positive integer"),
    "iterations": (lambda v: _integer(v, 0), "an integer >= 0"),
    "seed": (lambda v: _integer(v, 0), "an integer >= 0"),
    "epsilon": (lambda v: _numbers([v]) and v >= 0, "a finite number >= 0"),
    "delta": (lambda v: _numbers([v]) and 0 <= v <= 1, "a number in [0, 1]"),
}


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    """Refuse a ``format_version`` this code does not read and a known key holding a bad value.

    A file without ``format_version`` (made by hand, not by :meth:`SyntheticSet.save`) is read
    as version :data:`FORMAT_VERSION`.
    """
    for key, (rule, expected) in _META_RULES.items():
        if key in meta and not rule(meta[key]):
            raise SyntheticSetError(f"{path}: metadata key {key!r} must be {expected}, got {meta[key]!r}")
    version = meta.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise SyntheticSetError(
            f"{path}: format_version {version} is not one this fedcond reads (it reads {FORMAT_VERSION}); "
            "the file was written by another fedcond version"
        )


#: Default cap on one array of a synthetic-set file (a CIFAR-100 set of 50 images per class is
#: 61 MB); :meth:`SyntheticSet.load` refuses larger declared arrays before reading them.
MAX_ARRAY_BYTES = 2**31


def _check_declared_sizes(path: Path, *, max_bytes: int) -> None:
    """Refuse an archive whose ``.npy`` members declare arrays over ``max_bytes`` (headers only)."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            declared = math.prod(shape) * dtype.itemsize
            if declared > max_bytes or info.file_size > max_bytes + 4096:
                raise SyntheticSetError(
                    f"{path}: array {info.filename[:-4]!r} declares {max(declared, info.file_size) / 2**30:.1f} GiB "
                    f"(shape {tuple(shape)}), over the {max_bytes / 2**30:.1f} GiB limit of a synthetic set"
                )


@dataclass(frozen=True)
class SyntheticSet:
    """A condensed dataset.

    Attributes
    ----------
    images : torch.Tensor
        float32 ``N x C x H x W`` in the dataset's normalised space.
    labels : torch.Tensor
        int64 ``N``.
    meta : dict
        ``dataset``, ``num_classes``, ``mean``, ``std``, ``ipc``, ``method``, ``init``, ``seed``,
        ``iterations``, ``factor`` (multi-formation, see :meth:`decoded`; 1 when absent) and,
        under DP, ``epsilon``/``delta``. JSON-serialisable values only.
    """

    images: torch.Tensor
    labels: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """Class count recorded in ``meta``, else one more than the largest label."""
        return int(self.meta.get("num_classes", int(self.labels.max()) + 1 if len(self) else 0))

    @property
    def factor(self) -> int:
        """Tiles per side of each stored image (``meta["factor"]``; 1 for a plain set)."""
        return int(self.meta.get("factor", 1))

    def decoded(self) -> SyntheticSet:
        """The images a network trains on.

        A plain set (``factor`` 1) is returned as is. A multi-formation set stores
        ``factor x factor`` downsampled tiles per image (:mod:`fedcond.distill.formation`);
        the decoded set holds every tile upsampled to full size, ``len(self) * factor^2``
        images, with ``meta["factor"] = 1`` and ``meta["stored_images"]`` the stored count.
        """
        if self.factor == 1:
            return self
        with torch.no_grad():
            images = decode_formation(self.images, factor=self.factor).contiguous()
        meta = {**self.meta, "factor": 1, "stored_images": len(self), "decoded_from_factor": self.factor}
        return SyntheticSet(images, expand_labels(self.labels, factor=self.factor), meta)

    def class_counts(self) -> torch.Tensor:
        """Images per class, length ``num_classes``."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def validate(
        self,
        *,
        num_classes: int | None = None,
        image_shape: tuple[int, ...] | None = None,
        max_images: int | None = None,
    ) -> None:
        """Check dtypes, shapes, finiteness and the label range.

        Raises
        ------
        SyntheticSetError
            Naming the first problem found.
        """
        images, labels = self.images, self.labels
        if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
            raise SyntheticSetError("images and labels must be torch tensors")
        if images.dtype != torch.float32:
            raise SyntheticSetError(f"images must be float32, got {images.dtype}")
        if labels.dtype != torch.int64:
            raise SyntheticSetError(f"labels must be int64, got {labels.dtype}")
        if images.ndim != 4:
            raise SyntheticSetError(f"images must be N x C x H x W, got shape {tuple(images.shape)}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise SyntheticSetError(
                f"{images.shape[0]} images but labels of shape {tuple(labels.shape)}"
            )
        if image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape):
            raise SyntheticSetError(
                f"images are {tuple(images.shape[1:])}, the dataset's images are {tuple(image_shape)}"
            )
        if not bool(torch.isfinite(images).all()):
            bad = int((~torch.isfinite(images)).flatten(1).any(1).sum())
            raise SyntheticSetError(f"{bad} image(s) contain NaN or infinite values")
        classes = num_classes if num_classes is not None else self.meta.get("num_classes")
        if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
            raise SyntheticSetError(f"num_classes must be a positive integer, got {classes!r}")
        if len(labels):
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or (classes is not None and high >= int(classes)):
                raise SyntheticSetError(
                    f"labels span [{low}, {high}], outside the valid range [0, {classes})"
                )
        try:
            check_factor(self.meta.get("factor", 1), image_size=tuple(images.shape[2:]))
        except ValueError as exc:
            raise SyntheticSetError(f"meta {exc}") from exc
        if max_images is not None and images.shape[0] > max_images:
            raise SyntheticSetError(f"{images.shape[0]} images exceed the cap of {max_images}")

    # --------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write the set as ``.npz`` (no pickle). Returns the path written.

        The file is written to a temporary name and renamed, so an interrupted save never
        leaves a truncated file where a good one was.
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, "format_version": FORMAT_VERSION}
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as fh:
            np.savez(
                fh,
                images=self.images.detach().cpu().numpy(),
                labels=self.labels.detach().cpu().numpy(),
                meta=np.array(json.dumps(meta)),
            )
        tmp.replace(path)
        return path

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        num_classes: int | None = None,
        image_shape: tuple[int, ...] | None = None,
        max_bytes: int = MAX_ARRAY_BYTES,
    ) -> SyntheticSet:
        """Read a set written by :meth:`save`, refusing anything malformed.

        Parameters
        ----------
        path : str | Path
            The ``.npz`` file.
        num_classes, image_shape : optional
            When given, the set must match them (e.g. the dataset it will be evaluated on); a
            set whose metadata records another class count is refused too.
        max_bytes : int
            Largest array the file may declare. Checked from the arrays' headers before any
            data is read, so a small crafted file (a declared shape of terabytes, or a deflate
            bomb) is refused instead of exhausting memory.

        Raises
        ------
        SyntheticSetError
            If the file is missing, truncated, not a synthetic-set archive, of another
            ``format_version``, or inconsistent; a bad metadata value is named by its key.
        """
        path = Path(path)
        if not path.is_file():
            raise SyntheticSetError(f"synthetic set file {path} does not exist")
        try:
            _check_declared_sizes(path, max_bytes=max_bytes)
            with np.load(path, allow_pickle=False) as archive:
                missing = {"images", "labels"} - set(archive.files)
                if missing:
                    raise SyntheticSetError(f"{path} is not a fedcond synthetic set (missing {sorted(missing)})")
                images = np.array(archive["images"])
                labels = np.array(archive["labels"])
                # a set written by another tool may carry no metadata: read as an empty record
                meta_raw = archive["meta"] if "meta" in archive.files else np.array("{}")
            if meta_raw.ndim != 0 or meta_raw.dtype.kind not in "US":
                raise SyntheticSetError(
                    f"{path}: member 'meta' must hold one JSON string, got a {meta_raw.dtype} array of shape "
                    f"{meta_raw.shape}"
                )
            meta_item = meta_raw.item()
            meta_text = meta_item.decode("utf-8") if isinstance(meta_item, bytes) else str(meta_item)
            try:
                meta = json.loads(meta_text)
            except ValueError as exc:
                raise SyntheticSetError(f"{path}: member 'meta' is not valid JSON ({exc})") from exc
        except SyntheticSetError:
            raise
        except MemoryError as exc:
            raise SyntheticSetError(f"{path}: its arrays do not fit in memory ({exc})") from exc
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
            raise SyntheticSetError(
                f"{path} is truncated, corrupted or not a fedcond synthetic set: {exc}"
            ) from exc
        if not isinstance(meta, dict):
            raise SyntheticSetError(f"{path}: metadata is not a JSON object")
        _check_meta(path, meta)
        if images.dtype != np.float32 or labels.dtype != np.int64:
            raise SyntheticSetError(
                f"{path}: expected float32 images and int64 labels, got {images.dtype} and {labels.dtype}"
            )
        if images.shape[0] == 0:
            raise SyntheticSetError(f"{path} holds no images")
        shape = meta.get("image_shape")
        if shape is not None and list(shape) != list(images.shape[1:]):
            raise SyntheticSetError(
                f"{path}: metadata says images are {shape}, the file holds {list(images.shape[1:])}"
            )
        recorded = meta.get("num_classes")
        if num_classes is not None and recorded is not None and recorded != num_classes:
            raise SyntheticSetError(
                f"{path} was made for {recorded} classes, {num_classes} expected (another dataset?)"
            )
        synthetic = cls(torch.from_numpy(images), torch.from_numpy(labels), meta)
        synthetic.validate(num_classes=num_classes, image_shape=image_shape)
        return synthetic

    def to(self, device: torch.device | str) -> SyntheticSet:
        """A copy on ``device``."""
        return SyntheticSet(self.images.to(device), self.labels.to(device), dict(self.meta))
