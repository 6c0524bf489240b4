"""Dataset registry: every dataset is loaded in bulk into normalised tensors.

Each loader returns a :class:`DatasetSplits` whose ``train`` and ``test`` are
:class:`ArrayDataset` objects (``images`` float32 ``N x C x H x W`` in the dataset's
normalised space, ``labels`` int64). Arrays are converted in one vectorised step; nothing
iterates over ``dataset[i]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedcond.config import DataConfig

__all__ = [
    "ArrayDataset",
    "DatasetNotFoundError",
    "DatasetSpec",
    "DatasetSplits",
    "available_datasets",
    "load_dataset",
]

logger = logging.getLogger(__name__)


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where they were looked for; the message names them."""


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of a dataset.

    Attributes
    ----------
    name : str
        Registry name.
    num_classes, channels : int
        Label count and image channels.
    image_size : tuple[int, int]
        Height and width.
    mean, std : tuple[float, ...]
        Per-channel normalisation applied to pixels in ``[0, 1]``.
    """

    name: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return (self.channels, *self.image_size)

    def denormalise(self, images: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
        """Map normalised images back to ``[0, 1]`` pixels, for figures (``clamp=False``: unclamped)."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        pixels = images * std + mean
        return pixels.clamp(0.0, 1.0) if clamp else pixels

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map ``[0, 1]`` pixels into the normalised space."""
        mean = torch.tensor(self.mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
        return (pixels - mean) / std


@dataclass(frozen=True)
class ArrayDataset:
    """Images and labels held as tensors.

    Attributes
    ----------
    images : torch.Tensor
        float32 ``N x C x H x W``, normalised.
    labels : torch.Tensor
        int64 ``N``.
    spec : DatasetSpec
        The dataset the arrays come from.
    """

    images: torch.Tensor
    labels: torch.Tensor
    spec: DatasetSpec

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1:] != self.spec.image_shape:
            raise ValueError(
                f"{self.spec.name}: images have shape {tuple(self.images.shape)}, "
                f"expected N x {self.spec.image_shape}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"{self.spec.name}: {self.labels.shape[0]} labels for {self.images.shape[0]} images"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor | np.ndarray | list[int]) -> ArrayDataset:
        """The samples at ``indices`` (a copy-free view where torch allows)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ArrayDataset(self.images[idx], self.labels[idx], self.spec)

    def class_counts(self) -> torch.Tensor:
        """Samples per class, length ``num_classes``."""
        return torch.bincount(self.labels, minlength=self.spec.num_classes)

    def to_torch_dataset(self) -> torch.utils.data.TensorDataset:
        """A ``TensorDataset`` of ``(image, label)`` pairs for DataLoaders and Avalanche."""
        return torch.utils.data.TensorDataset(self.images, self.labels)


@dataclass(frozen=True)
class DatasetSplits:
    """Train and test splits of one dataset."""

    train: ArrayDataset
    test: ArrayDataset

    @property
    def spec(self) -> DatasetSpec:
        """The dataset spec shared by both splits."""
        return self.train.spec


# --------------------------------------------------------------------------------------- specs
_SPECS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", 10, 1, (8, 8), (0.3050,), (0.3769,)),
    "mnist": DatasetSpec("mnist", 10, 1, (28, 28), (0.1307,), (0.3081,)),
    "fashion-mnist": DatasetSpec("fashion-mnist", 10, 1, (28, 28), (0.2861,), (0.3530,)),
    # CIFAR-10's std is the DC/DSA/DM reference code's (the mean of per-image stds, not the
    # pixel std 0.247/0.243/0.261), kept so that results compare with the field's
    "cifar10": DatasetSpec(
        "cifar10", 10, 3, (32, 32), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    ),
    "cifar100": DatasetSpec(
        "cifar100", 100, 3, (32, 32), (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
    "svhn": DatasetSpec(
        "svhn", 10, 3, (32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
    ),
}

_EXPECTED_FILES: dict[str, str] = {
    "mnist": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "fashion-mnist": "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "cifar10": "cifar-10-batches-py/{data_batch_1..5,test_batch}",
    "cifar100": "cifar-100-python/{train,test}",
    "svhn": "{train,test}_32x32.mat",
}

DIGIT_DATASETS = frozenset({"digits", "mnist", "svhn"})


def available_datasets() -> list[str]:
    """Registry names accepted by :func:`load_dataset`."""
    return sorted([*_SPECS, "imagefolder"])


def _to_normalised(pixels_uint8: np.ndarray | torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """``N x C x H x W`` uint8 pixels -> normalised float32, in one vectorised step."""
    tensor = torch.as_tensor(np.asarray(pixels_uint8))
    images = tensor.to(torch.float32).div_(255.0)
    return spec.normalise(images).contiguous()


def _load_digits(config: DataConfig) -> DatasetSplits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    pixels = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels
    )
    spec = _SPECS["digits"]
    images = spec.normalise(torch.from_numpy(pixels))
    labels_t = torch.from_numpy(labels)
    return DatasetSplits(
        ArrayDataset(images[train_idx].contiguous(), labels_t[train_idx], spec),
        ArrayDataset(images[test_idx].contiguous(), labels_t[test_idx], spec),
    )


def _require_root(config: DataConfig) -> Path:
    downloadable = config.dataset in _EXPECTED_FILES  # a user's own image folder cannot be downloaded
    if config.data_dir is None and config.download and downloadable:
        raise DatasetNotFoundError(
            f"dataset {config.dataset!r}: --download needs --data-dir DIR, the folder to download it into"
        )
    if config.data_dir is None:
        if not downloadable:
            raise DatasetNotFoundError(
                f"dataset {config.dataset!r} needs --data-dir pointing at a folder holding train/ and test/, "
                "each with one sub-folder of images per class"
            )
        raise DatasetNotFoundError(
            f"dataset {config.dataset!r} needs --data-dir pointing at a torchvision-layout root "
            f"holding {_EXPECTED_FILES[config.dataset]} (or pass --download to fetch it)"
        )
    return Path(config.data_dir).expanduser()


def _torchvision_split(factory: Callable[..., object], config: DataConfig, **kwargs: object) -> object:
    root = _require_root(config)
    try:
        return factory(root=str(root), download=config.download, **kwargs)
    except (RuntimeError, OSError) as exc:
        if config.download:
            raise DatasetNotFoundError(
                f"dataset {config.dataset!r}: could not download it into {root} ({type(exc).__name__}: {exc})"
            ) from exc
        raise DatasetNotFoundError(
            f"dataset {config.dataset!r} not found under {root}: expected "
            f"{root}/{_EXPECTED_FILES[config.dataset]} (pass --download to fetch it). "
            f"torchvision said: {exc}"
        ) from exc


def _load_torchvision(config: DataConfig) -> DatasetSplits:
    import torchvision.datasets as tvd

    name = config.dataset
    spec = _SPECS[name]

    def split(train: bool) -> ArrayDataset:
        if name in ("mnist", "fashion-mnist"):
            factory = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
            ds = _torchvision_split(factory, config, train=train)
            pixels = ds.data.unsqueeze(1)  # type: ignore[attr-defined]
            labels = torch.as_tensor(ds.targets, dtype=torch.long)  # type: ignore[attr-defined]
        elif name in ("cifar10", "cifar100"):
            factory = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            ds = _torchvision_split(factory, config, train=train)
            pixels = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))  # type: ignore[attr-defined]
            labels = torch.as_tensor(ds.targets, dtype=torch.long)  # type: ignore[attr-defined]
        else:  # svhn
            ds = _torchvision_split(tvd.SVHN, config, split="train" if train else "test")
            pixels = ds.data  # type: ignore[attr-defined]
            labels = torch.as_tensor(ds.labels, dtype=torch.long)  # type: ignore[attr-defined]
        return ArrayDataset(_to_normalised(pixels, spec), labels, spec)

    return DatasetSplits(split(True), split(False))


#: Pillow's 16-bit greyscale modes ("I" is how some Pillow versions open a 16-bit PNG)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _image_pixels(img: Any, *, mode: str, path: Path) -> np.ndarray:
    """``img`` as uint8 pixels in ``mode`` (``L`` or ``RGB``).

    16-bit greyscale is rescaled (``v / 257``), not clipped: Pillow's ``convert("L")`` clips
    every value above 255 to white, which would turn a 16-bit scan into a blank image.
    """
    if img.mode in _SIXTEEN_BIT_MODES:
        raw = np.asarray(img).astype(np.int64)
        if raw.size and (raw.min() < 0 or raw.max() > 65535):
            raise ValueError(f"{path}: {img.mode} pixels outside 0..65535; save it as an 8- or 16-bit image")
        grey = np.round(raw / 257.0).astype(np.uint8)
        return grey if mode == "L" else np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "F":
        raise ValueError(f"{path}: floating-point images (mode F) are not supported; save it as an 8- or 16-bit image")
    return np.asarray(img.convert(mode))


#: image file suffixes ``imagefolder`` reads: torchvision's ``IMG_EXTENSIONS`` plus ``.gif``
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
#: Pillow modes read as one greyscale channel
_GREY_MODES = ("L", "1", *_SIXTEEN_BIT_MODES)


def _class_files(split_dir: Path, classes: list[str]) -> list[list[Path]]:
    """Image files per class under ``split_dir/<class>/``, subfolders included (as torchvision's
    ``ImageFolder`` walks them), sorted; other files are skipped with a warning naming how many."""
    out: list[list[Path]] = []
    skipped: list[Path] = []
    for cls in classes:
        folder = split_dir / cls
        paths = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
        out.append([p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES])
        skipped += [p for p in paths if p.suffix.lower() not in IMAGE_SUFFIXES]
    if skipped:
        logger.warning(
            "imagefolder: skipped %d file(s) under %s that are not images (%s), e.g. %s",
            len(skipped), split_dir, ", ".join(IMAGE_SUFFIXES), skipped[0],
        )
    return out


def _load_imagefolder(config: DataConfig) -> DatasetSplits:
    from PIL import Image

    root = _require_root(config)
    train_dir, test_dir = root / "train", root / "test"
    for d in (train_dir, test_dir):
        if not d.is_dir():
            raise DatasetNotFoundError(
                f"imagefolder dataset expects {train_dir}/<class>/*.png and {test_dir}/<class>/*.png; "
                f"{d} is missing"
            )
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise DatasetNotFoundError(f"no class folders under {train_dir}")
    unknown = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and p.name not in classes)
    if unknown:
        # the label set comes from train/; test images of other classes would be dropped silently
        raise ValueError(f"{test_dir} has class folders that {train_dir} lacks: {', '.join(unknown[:5])}")
    files = {split_dir: _class_files(split_dir, classes) for split_dir in (train_dir, test_dir)}
    empty = [cls for cls, paths in zip(classes, files[train_dir], strict=True) if not paths]
    if empty:
        # a class without a single training image would silently become a label nothing teaches
        raise DatasetNotFoundError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) under {train_dir}/<class>/ for class(es) "
            f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}"
        )
    # one colour mode for every image: RGB as soon as any image has colour (greyscale images are
    # then replicated to three channels, losslessly), never the first file's mode for all;
    # Image.open reads only the header here, the pixels are decoded once, in read()
    mode = "L"
    for path in (p for split in files.values() for paths in split for p in paths):
        with Image.open(path) as img:
            if img.mode not in _GREY_MODES:
                mode = "RGB"
                break

    def read(split_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        arrays: list[np.ndarray] = []
        labels: list[int] = []
        for label, paths in enumerate(files[split_dir]):
            for path in paths:
                with Image.open(path) as img:
                    arrays.append(_image_pixels(img, mode=mode, path=path))
                labels.append(label)
        if not arrays:
            raise DatasetNotFoundError(f"no images found under {split_dir}/<class>/")
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"images under {split_dir} differ in size: {sorted(shapes)[:4]}; resize them first")
        stacked = np.stack(arrays)
        if stacked.ndim == 3:
            stacked = stacked[:, None]
        else:
            stacked = stacked.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(stacked), np.asarray(labels, dtype=np.int64)

    train_px, train_y = read(train_dir)
    test_px, test_y = read(test_dir)
    pixels = train_px.astype(np.float32) / 255.0
    mean = tuple(float(m) for m in pixels.mean(axis=(0, 2, 3)))
    std = tuple(max(float(s), 1e-6) for s in pixels.std(axis=(0, 2, 3)))
    spec = DatasetSpec("imagefolder", len(classes), train_px.shape[1], tuple(train_px.shape[2:]), mean, std)  # type: ignore[arg-type]
    return DatasetSplits(
        ArrayDataset(_to_normalised(train_px, spec), torch.from_numpy(train_y), spec),
        ArrayDataset(_to_normalised(test_px, spec), torch.from_numpy(test_y), spec),
    )


def get_spec(name: str) -> DatasetSpec:
    """The static spec of a registered dataset (not available for ``imagefolder``)."""
    if name == "imagefolder":
        raise ValueError(
            "imagefolder has no static spec: its classes, shape and normalisation come from the files; "
            "use load_dataset(DataConfig(dataset='imagefolder', data_dir=...)).spec"
        )
    if name not in _SPECS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(available_datasets())}")
    return _SPECS[name]


def load_dataset(config: DataConfig | str) -> DatasetSplits:
    """Load a registered dataset's train and test splits as normalised tensors.

    Parameters
    ----------
    config : DataConfig | str
        Dataset name, root folder and download switch (a bare name means bundled data).

    Raises
    ------
    ValueError
        For an unknown dataset name.
    DatasetNotFoundError
        When the files are missing; the message names the expected files and folder.
    """
    if isinstance(config, str):
        config = DataConfig(dataset=config)
    name = config.dataset.lower()
    if name != config.dataset:
        config = DataConfig(dataset=name, data_dir=config.data_dir, download=config.download)
    if name == "digits":
        return _load_digits(config)
    if name == "imagefolder":
        return _load_imagefolder(config)
    if name in _SPECS:
        return _load_torchvision(config)
    raise ValueError(f"unknown dataset {config.dataset!r}; choose one of {', '.join(available_datasets())}")
