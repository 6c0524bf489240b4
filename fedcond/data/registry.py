"""Dataset registry: every dataset is loaded in bulk into normalised tensors.

Each loader returns a :class:`DatasetSplits` whose ``train`` and ``test`` are
:class:`ArrayDataset` objects (``images`` float32 ``N x C x H x W`` in the dataset's
normalised space, ``labels`` int64). Arrays are converted in one vectorised step; nothing
iterates over ``dataset[i]``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

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
    class_names : tuple[str, ...]
        Name of each label, for figures and tables (empty: the labels are shown as numbers).
        Display only: two specs that differ in names alone compare equal.
    """

    name: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return (self.channels, *self.image_size)

    def class_name(self, label: int) -> str:
        """The name of ``label`` (its number as text when the dataset has no names)."""
        label = int(label)
        if self.class_names and 0 <= label < len(self.class_names):
            return self.class_names[label]
        return str(label)

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
_DIGIT_NAMES = tuple(str(d) for d in range(10))
#: torchvision's ``FashionMNIST.classes``
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
#: torchvision's ``CIFAR10.classes`` (alphabetical, so an ImageFolder tree of CIFAR-10 gets the same labels)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_SPECS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", 10, 1, (8, 8), (0.3050,), (0.3769,), _DIGIT_NAMES),
    "mnist": DatasetSpec("mnist", 10, 1, (28, 28), (0.1307,), (0.3081,), _DIGIT_NAMES),
    "fashion-mnist": DatasetSpec("fashion-mnist", 10, 1, (28, 28), (0.2861,), (0.3530,), FASHION_MNIST_CLASSES),
    # CIFAR-10's std is the DC/DSA/DM reference code's (the mean of per-image stds, not the
    # pixel std 0.247/0.243/0.261), kept so that results compare with the field's
    "cifar10": DatasetSpec(
        "cifar10", 10, 3, (32, 32), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), CIFAR10_CLASSES
    ),
    # CIFAR-100's hundred names come from torchvision's files when the data is loaded
    "cifar100": DatasetSpec(
        "cifar100", 100, 3, (32, 32), (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
    "svhn": DatasetSpec(
        "svhn", 10, 3, (32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), _DIGIT_NAMES
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
#: datasets that ship with their library (scikit-learn's digits): they read no folder and download nothing
BUNDLED_DATASETS = frozenset({"digits"})


def available_datasets() -> list[str]:
    """Registry names accepted by :func:`load_dataset`."""
    return sorted([*_SPECS, "imagefolder"])


def _to_normalised(pixels_uint8: np.ndarray | torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """``N x C x H x W`` uint8 pixels -> normalised float32, in one vectorised step.

    In place on the one float copy (``spec.normalise``'s arithmetic): CIFAR-10's training split
    is 600 MB as float32, and every temporary of that size costs seconds.
    """
    tensor = torch.as_tensor(np.asarray(pixels_uint8))
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    return tensor.to(torch.float32).div_(255.0).sub_(mean).div_(std).contiguous()


def _pixel_statistics(pixels_uint8: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``N x C x H x W`` uint8 pixels, in ``[0, 1]`` units.

    From one 256-bin histogram per channel, exact in float64, without a float copy of the images.
    """
    means, stds = [], []
    for channel in range(pixels_uint8.shape[1]):
        counts = np.bincount(pixels_uint8[:, channel].ravel(), minlength=256).astype(np.float64)
        values = np.arange(256, dtype=np.float64) / 255.0
        mean = float((counts * values).sum() / counts.sum())
        variance = float((counts * (values - mean) ** 2).sum() / counts.sum())
        means.append(mean)
        stds.append(max(variance**0.5, 1e-6))
    return tuple(means), tuple(stds)


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
        also = (
            " or at CIFAR-10's images in the ImageFolder layout train/<class>/ and test/<class>/"
            if config.dataset == "cifar10"
            else ""
        )
        raise DatasetNotFoundError(
            f"dataset {config.dataset!r} needs --data-dir pointing at a torchvision-layout root "
            f"holding {_EXPECTED_FILES[config.dataset]} (or pass --download to fetch it){also}"
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

    def split(train: bool) -> tuple[np.ndarray | torch.Tensor, torch.Tensor]:
        nonlocal spec
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
            if not spec.class_names:  # CIFAR-100's names are read from its meta file
                spec = replace(spec, class_names=tuple(ds.classes))  # type: ignore[attr-defined]
        else:  # svhn
            ds = _torchvision_split(tvd.SVHN, config, split="train" if train else "test")
            pixels = ds.data  # type: ignore[attr-defined]
            labels = torch.as_tensor(ds.labels, dtype=torch.long)  # type: ignore[attr-defined]
        return pixels, labels

    train, test = split(True), split(False)
    return DatasetSplits(
        ArrayDataset(_to_normalised(train[0], spec), train[1], spec),
        ArrayDataset(_to_normalised(test[0], spec), test[1], spec),
    )


ProgressCallback = Callable[[int, int], None]

#: environment variable naming the folder of decoded-image caches (``off`` turns caching off)
CACHE_DIR_VARIABLE = "FEDCOND_CACHE_DIR"


def image_cache_dir() -> Path | None:
    """Where decoded ImageFolder trees are cached (see :mod:`fedcond.data.imagefolder`).

    ``$FEDCOND_CACHE_DIR`` when set (``off`` or empty: no cache), else ``$XDG_CACHE_HOME/fedcond``,
    else ``~/.cache/fedcond``.
    """
    value = os.environ.get(CACHE_DIR_VARIABLE)
    if value is not None:
        return None if value.strip().lower() in ("", "off") else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "fedcond"


def _load_imagefolder(config: DataConfig, *, progress: ProgressCallback | None) -> DatasetSplits:
    """A user's ImageFolder tree; its normalisation is the training split's own pixel statistics
    (a folder of unknown images has no published ones)."""
    from fedcond.data.imagefolder import read_image_folder

    tree = read_image_folder(_require_root(config), progress=progress, cache_dir=image_cache_dir())
    mean, std = _pixel_statistics(tree.train_pixels)
    channels, height, width = tree.train_pixels.shape[1:]
    spec = DatasetSpec("imagefolder", len(tree.classes), channels, (height, width), mean, std, tree.classes)
    return DatasetSplits(
        ArrayDataset(_to_normalised(tree.train_pixels, spec), torch.from_numpy(tree.train_labels), spec),
        ArrayDataset(_to_normalised(tree.test_pixels, spec), torch.from_numpy(tree.test_labels), spec),
    )


def _cifar10_layout(root: Path) -> str | None:
    """``"torchvision"`` (cifar-10-batches-py/), ``"imagefolder"`` (train/ and test/) or None."""
    if (root / "cifar-10-batches-py").is_dir():
        return "torchvision"
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "imagefolder"
    return None


def _cifar10_root_hint(root: Path) -> str:
    """A sentence naming the sub-folders of ``root`` that hold a CIFAR-10 layout (a user who
    pointed at the folder above the CIFAR-10 root), or why ``root`` itself cannot hold one."""
    if not root.is_dir():
        return f" ({root} is not a folder)"
    try:
        nested = [child for child in sorted(root.iterdir()) if child.is_dir() and _cifar10_layout(child)]
    except OSError:  # an unreadable folder: the message without the hint
        return ""
    if not nested:
        return ""
    if len(nested) == 1:
        return f"; {nested[0]} holds one: point --data-dir at that folder"
    return f"; {', '.join(str(child) for child in nested)} hold one each: point --data-dir at one of them"


def _load_cifar10(config: DataConfig, *, progress: ProgressCallback | None) -> DatasetSplits:
    """CIFAR-10 from torchvision's files or from an ImageFolder tree of its images (e.g. JPEGs).

    Both layouts give the same spec: the same labels (the class folders must be CIFAR-10's ten
    names, whose alphabetical order is torchvision's label order) and the same normalisation
    (the field's CIFAR-10 mean/std, not the folder's own statistics), so synthetic sets,
    checkpoints and accuracies carry over from one layout to the other.
    """
    root = _require_root(config)
    layout = _cifar10_layout(root)
    if layout == "torchvision" or (layout is None and config.download):
        return _load_torchvision(config)
    if layout is None:
        raise DatasetNotFoundError(
            f"dataset 'cifar10' not found under {root}: expected torchvision's layout "
            f"{root}/{_EXPECTED_FILES['cifar10']} (pass --download to fetch it) or CIFAR-10's images in "
            f"the ImageFolder layout {root}/train/<class>/<image> and {root}/test/<class>/<image> "
            f"with the classes {', '.join(CIFAR10_CLASSES)}{_cifar10_root_hint(root)}"
        )
    from fedcond.data.imagefolder import ImageFolderError, read_image_folder

    spec = _SPECS["cifar10"]
    tree = read_image_folder(root, progress=progress, cache_dir=image_cache_dir())
    if tree.classes != CIFAR10_CLASSES:
        raise ImageFolderError(
            f"{root}/train holds the class folders {', '.join(tree.classes[:12])}"
            f"{' ...' if len(tree.classes) > 12 else ''}, not CIFAR-10's {', '.join(CIFAR10_CLASSES)}; "
            "read another image collection with --dataset imagefolder"
        )
    if tree.train_pixels.shape[1:] != spec.image_shape:
        shape = "x".join(str(d) for d in tree.train_pixels.shape[1:])
        raise ImageFolderError(
            f"images under {root} are {shape} (channels x height x width), CIFAR-10's are 3x32x32; "
            "read them with --dataset imagefolder"
        )
    logger.info("cifar10: read the ImageFolder layout under %s", root)
    return DatasetSplits(
        ArrayDataset(_to_normalised(tree.train_pixels, spec), torch.from_numpy(tree.train_labels), spec),
        ArrayDataset(_to_normalised(tree.test_pixels, spec), torch.from_numpy(tree.test_labels), spec),
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


def load_dataset(config: DataConfig | str, *, progress: ProgressCallback | None = None) -> DatasetSplits:
    """Load a registered dataset's train and test splits as normalised tensors.

    Parameters
    ----------
    config : DataConfig | str
        Dataset name, root folder and download switch (a bare name means bundled data).
        ``cifar10`` reads torchvision's ``cifar-10-batches-py/`` or, when the root holds
        ``train/`` and ``test/`` instead, CIFAR-10's images in the ImageFolder layout.
    progress : callable(done, total) | None
        Called while image files decode (``imagefolder`` and CIFAR-10's ImageFolder layout);
        datasets stored as arrays load in one step without calling it.

    Raises
    ------
    ValueError
        For an unknown dataset name; :class:`~fedcond.data.imagefolder.ImageFolderError` (a
        ``ValueError``) for an image file that cannot be decoded or images of different sizes.
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
        return _load_imagefolder(config, progress=progress)
    if name == "cifar10":
        return _load_cifar10(config, progress=progress)
    if name in _SPECS:
        return _load_torchvision(config)
    raise ValueError(f"unknown dataset {config.dataset!r}; choose one of {', '.join(available_datasets())}")
