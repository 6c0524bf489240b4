"""Read an ImageFolder tree (``root/{train,test}/<class>/<image>``) into uint8 arrays.

One job: find the images, decode them with Pillow (in threads: Pillow releases the GIL while
decoding, so 60,000 small JPEGs decode several times faster than one file after another), and
say which file or folder is wrong when the tree cannot be used. Normalisation, specs and labels
of registered datasets belong to :mod:`fedcond.data.registry`.

What is read and what is skipped
--------------------------------
- Class folders are the sub-folders of ``train/``, sorted by name (label ``k`` is the ``k``-th
  name, as in torchvision's ``ImageFolder``); images in nested sub-folders of a class count for
  that class.
- Hidden entries (a name starting with ``.``: ``.DS_Store``, macOS ``._x.jpg`` resource forks,
  ``.ipynb_checkpoints/``) are skipped silently at every level.
- Other files whose suffix is not in :data:`IMAGE_SUFFIXES` (``README.txt``, ``labels.csv``) are
  skipped with one warning naming how many and an example.
- A file with an image suffix that Pillow cannot decode (corrupt, truncated, empty, not an
  image) is an :class:`ImageFolderError` naming the file: it is never skipped silently, since
  a dropped image changes the data without a word.
- Colour: one mode for every image, RGB as soon as any image has colour (greyscale images are
  then replicated to three channels, losslessly), else greyscale; greyscale with alpha (``LA``,
  the alpha dropped) and palette images whose palette holds only greys count as greyscale.
- Classes: at least two (a tree of one class would train a classifier that scores 100% and
  learns nothing).
- Size: every image must have the size of the most common one; the first that differs is named.

Cache
-----
Decoding is the slow part (about 30 s for CIFAR-10's 60,000 JPEGs on two busy cores), so a tree
of at least :data:`CACHE_FROM` images is stored once decoded, as an ``.npz`` of uint8 arrays
(read back with ``allow_pickle=False``: no pickle), in ``cache_dir``. Its name is a hash of the
tree: every image's relative path, size and modification time, so adding, removing, replacing
or touching any image makes a new entry. A cache file that cannot be read or does not match is
ignored (with a warning) and the images are decoded again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedcond.data.registry import DatasetNotFoundError

__all__ = ["CACHE_FROM", "IMAGE_SUFFIXES", "ImageFolderError", "ImageFolderTree", "read_image_folder"]

logger = logging.getLogger(__name__)

#: image file suffixes read: torchvision's ``IMG_EXTENSIONS`` plus ``.gif``
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
#: Pillow's 16-bit greyscale modes ("I" is how some Pillow versions open a 16-bit PNG)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
#: Pillow modes read as one greyscale channel
_GREY_MODES = ("L", "LA", "1", *_SIXTEEN_BIT_MODES)
#: below this many files the thread pool costs more than it saves
_THREADED_FROM = 256
#: progress is reported this many times per tree (at most)
_PROGRESS_STEPS = 100
#: trees of at least this many images are cached once decoded (smaller ones decode in about a second)
CACHE_FROM = 2000
#: part of every cache key: a change of what the arrays mean makes every earlier entry stale
_CACHE_FORMAT = "fedcond-imagefolder-2"

ProgressCallback = Callable[[int, int], None]


class ImageFolderError(ValueError):
    """A file or folder of an ImageFolder tree cannot be used; the message names it."""


@dataclass(frozen=True)
class ImageFolderTree:
    """The decoded tree: ``N x C x H x W`` uint8 pixels and int64 labels per split.

    Attributes
    ----------
    classes : tuple[str, ...]
        Class folder names; label ``k`` is ``classes[k]``.
    train_pixels, test_pixels : np.ndarray
        uint8 ``N x C x H x W`` (``C`` is 1 or 3).
    train_labels, test_labels : np.ndarray
        int64 ``N``.
    """

    classes: tuple[str, ...]
    train_pixels: np.ndarray
    train_labels: np.ndarray
    test_pixels: np.ndarray
    test_labels: np.ndarray


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _files_under(folder: Path) -> list[Path]:
    """Every visible file under ``folder`` (hidden files and folders pruned), sorted."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if _visible(d)]
        found += [Path(dirpath, f) for f in filenames if _visible(f)]
    return sorted(found)


def _class_files(split_dir: Path, classes: Sequence[str]) -> list[list[Path]]:
    """Image files per class under ``split_dir/<class>/``; other visible files are skipped with
    one warning naming how many."""
    out: list[list[Path]] = []
    skipped: list[Path] = []
    for cls in classes:
        folder = split_dir / cls
        paths = _files_under(folder) if folder.is_dir() else []
        out.append([p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES])
        skipped += [p for p in paths if p.suffix.lower() not in IMAGE_SUFFIXES]
    if skipped:
        logger.warning(
            "imagefolder: skipped %d file(s) under %s that are not images (%s), e.g. %s",
            len(skipped), split_dir, ", ".join(IMAGE_SUFFIXES), skipped[0],
        )
    return out


def _decode(path: Path) -> np.ndarray:
    """``path`` as uint8 pixels: ``H x W`` for greyscale modes, ``H x W x 3`` otherwise.

    16-bit greyscale is rescaled (``v / 257``), not clipped: Pillow's ``convert("L")`` clips
    every value above 255 to white, which would turn a 16-bit scan into a blank image.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode in _SIXTEEN_BIT_MODES:
                raw = np.asarray(img).astype(np.int64)
                if raw.size and (raw.min() < 0 or raw.max() > 65535):
                    raise ImageFolderError(
                        f"{path}: {img.mode} pixels outside 0..65535; save it as an 8- or 16-bit image"
                    )
                return np.round(raw / 257.0).astype(np.uint8)
            if img.mode == "F":
                raise ImageFolderError(
                    f"{path}: floating-point images (mode F) are not supported; save it as an 8- or 16-bit image"
                )
            if img.mode in _GREY_MODES:  # grey with or without alpha: one channel (alpha dropped)
                return np.asarray(img.convert("L"))
            rgb = np.asarray(img.convert("RGB"))
            if img.mode in ("P", "PA") and (rgb == rgb[..., :1]).all():  # a palette of greys only
                return np.ascontiguousarray(rgb[..., 0])
            return rgb
    except ImageFolderError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, EOFError...
        raise ImageFolderError(
            f"{path} is not a readable image ({type(exc).__name__}: {exc}); remove or replace the file"
        ) from exc


def _decode_all(paths: Sequence[Path], *, progress: ProgressCallback | None) -> list[np.ndarray]:
    """Decode ``paths`` in order (in threads for many files), reporting ``(done, total)``."""
    total = len(paths)
    step = max(1, total // _PROGRESS_STEPS)
    arrays: list[np.ndarray] = []
    workers = min(8, os.cpu_count() or 1) if total >= _THREADED_FROM else 1
    with ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imagefolder"))
            decoded: Iterator[np.ndarray] = pool.map(_decode, paths)  # results in the order of paths
        else:
            decoded = map(_decode, paths)
        for array in decoded:
            arrays.append(array)
            if progress is not None and (len(arrays) % step == 0 or len(arrays) == total):
                progress(len(arrays), total)
    return arrays


def _check_sizes(arrays: Sequence[np.ndarray], paths: Sequence[Path]) -> tuple[int, int]:
    """The common ``(H, W)``; the first image of another size is named (with the count)."""
    sizes = Counter(a.shape[:2] for a in arrays)
    common, _ = sizes.most_common(1)[0]
    if len(sizes) > 1:
        odd = next(i for i, a in enumerate(arrays) if a.shape[:2] != common)
        example = next(i for i, a in enumerate(arrays) if a.shape[:2] == common)
        others = sum(n for size, n in sizes.items() if size != common)
        height, width = arrays[odd].shape[:2]
        raise ImageFolderError(
            f"{paths[odd]} is {width}x{height} pixels but {paths[example]} (and most images) "
            f"{common[1]}x{common[0]}; {others} image(s) differ in size: resize them to one size first"
        )
    return common


def _stack(arrays: Sequence[np.ndarray], *, channels: int, size: tuple[int, int]) -> np.ndarray:
    """``N x C x H x W`` uint8; greyscale images are replicated when ``channels`` is 3."""
    out = np.empty((len(arrays), channels, *size), dtype=np.uint8)
    for i, array in enumerate(arrays):
        out[i] = array.transpose(2, 0, 1) if array.ndim == 3 else array[None]
    return out


def _split_folders(root: Path) -> tuple[Path, Path]:
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root} is not a folder (expected the folder holding train/ and test/)")
    train_dir, test_dir = root / "train", root / "test"
    missing = [d for d in (train_dir, test_dir) if not d.is_dir()]
    if missing:
        hint = ""
        looks_like_a_split = root.name in ("train", "test") or (
            not train_dir.exists() and any(p.is_dir() and _visible(p.name) for p in root.iterdir())
        )
        if looks_like_a_split:
            hint = f" (if {root} is itself one split or holds the class folders, point at the folder above it)"
        raise DatasetNotFoundError(
            f"an ImageFolder tree needs {train_dir}/<class>/<image> and {test_dir}/<class>/<image> "
            f"({', '.join(IMAGE_SUFFIXES)}); {' and '.join(str(d) for d in missing)} missing{hint}"
        )
    return train_dir, test_dir


def _cache_key(root: Path, classes: Sequence[str], split_files: Sequence[Sequence[Sequence[Path]]]) -> str:
    digest = hashlib.sha256(f"{_CACHE_FORMAT}\n{root.resolve()}\n".encode())
    digest.update("\n".join(classes).encode())
    for split, files in zip(("train", "test"), split_files, strict=True):
        for label, paths in enumerate(files):
            for path in paths:
                stat = path.stat()
                entry = f"\n{split}\t{label}\t{path.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}"
                digest.update(entry.encode())
    return digest.hexdigest()[:32]


def _read_cache(path: Path, classes: tuple[str, ...], counts: tuple[int, int]) -> ImageFolderTree | None:
    """The cached tree at ``path``, or None when it is absent, unreadable or does not match."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            tree = ImageFolderTree(
                classes=tuple(str(c) for c in archive["classes"]),
                train_pixels=archive["train_pixels"],
                train_labels=archive["train_labels"],
                test_pixels=archive["test_pixels"],
                test_labels=archive["test_labels"],
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        logger.warning("imagefolder: ignoring the unreadable cache %s (%s); decoding the images", path, exc)
        return None
    pixels, labels = (tree.train_pixels, tree.test_pixels), (tree.train_labels, tree.test_labels)
    valid = (
        tree.classes == classes
        and all(p.dtype == np.uint8 and p.ndim == 4 and p.shape[1] in (1, 3) for p in pixels)
        and pixels[0].shape[1:] == pixels[1].shape[1:]
        and all(y.dtype == np.int64 and y.shape == (p.shape[0],) for p, y in zip(pixels, labels, strict=True))
        and (len(tree.train_labels), len(tree.test_labels)) == counts
        and all(y.size == 0 or (y.min() >= 0 and y.max() < len(classes)) for y in labels)
    )
    if not valid:
        logger.warning("imagefolder: ignoring the cache %s, which does not match the tree; decoding the images", path)
        return None
    logger.info("imagefolder: read the decoded images from the cache %s", path)
    return tree


def _write_cache(path: Path, tree: ImageFolderTree) -> None:
    """Store ``tree`` at ``path`` atomically; a cache that cannot be written is only a warning."""
    partial: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        partial = Path(name)
        with os.fdopen(descriptor, "wb") as handle:
            np.savez(
                handle,
                classes=np.array(tree.classes, dtype=str),
                train_pixels=tree.train_pixels,
                train_labels=tree.train_labels,
                test_pixels=tree.test_pixels,
                test_labels=tree.test_labels,
            )
        os.replace(partial, path)
        logger.info("imagefolder: cached the decoded images in %s", path)
    except OSError as exc:
        logger.warning("imagefolder: could not write the cache %s (%s); the next run decodes again", path, exc)
        if partial is not None:
            partial.unlink(missing_ok=True)


def read_image_folder(
    root: str | Path, *, progress: ProgressCallback | None = None, cache_dir: str | Path | None = None
) -> ImageFolderTree:
    """Decode ``root/train/<class>/*`` and ``root/test/<class>/*`` into uint8 arrays.

    Parameters
    ----------
    root : str | Path
        The folder holding ``train/`` and ``test/``.
    progress : callable(done, total) | None
        Called while images decode (about a hundred times per tree, and at the end), ``total``
        counting both splits; a tree read from the cache reports ``(total, total)`` once.
    cache_dir : str | Path | None
        Where a tree of at least :data:`CACHE_FROM` images is cached once decoded (None: never).

    Raises
    ------
    DatasetNotFoundError
        ``train/`` or ``test/`` is missing, ``train/`` holds no class folder, a training class
        holds no image, or a split holds no image at all.
    ImageFolderError
        A file cannot be decoded, images differ in size, ``test/`` has a class ``train/`` lacks.
    """
    root = Path(root).expanduser()
    train_dir, test_dir = _split_folders(root)
    classes = tuple(sorted(p.name for p in train_dir.iterdir() if p.is_dir() and _visible(p.name)))
    if not classes:
        raise DatasetNotFoundError(f"no class folders under {train_dir} (expected {train_dir}/<class>/<image>)")
    unknown = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and _visible(p.name) and p.name not in classes)
    if unknown:
        # the label set comes from train/; test images of other classes would be dropped silently
        raise ImageFolderError(f"{test_dir} has class folders that {train_dir} lacks: {', '.join(unknown[:5])}")
    train_files, test_files = _class_files(train_dir, classes), _class_files(test_dir, classes)
    empty = [cls for cls, paths in zip(classes, train_files, strict=True) if not paths]
    if empty:
        # a class without a single training image would silently become a label nothing teaches
        raise DatasetNotFoundError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) under {train_dir}/<class>/ for class(es) "
            f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}"
        )
    if len(classes) == 1:
        # every label would be the same: a classifier scores 100% and learns nothing
        raise ImageFolderError(
            f"{train_dir} holds one class folder ({classes[0]}); classification needs at least two"
        )
    for split_dir, files in ((train_dir, train_files), (test_dir, test_files)):
        if not any(files):
            raise DatasetNotFoundError(f"no images found under {split_dir}/<class>/")
    untested = [cls for cls, paths in zip(classes, test_files, strict=True) if not paths]
    if untested:
        logger.warning(
            "imagefolder: %s has no images of class(es) %s; test accuracy does not cover them",
            test_dir, ", ".join(untested[:5]) + (" ..." if len(untested) > 5 else ""),
        )
    paths = [p for files in (train_files, test_files) for class_paths in files for p in class_paths]
    labels = [k for files in (train_files, test_files) for k, class_paths in enumerate(files) for _ in class_paths]
    n_train = sum(len(p) for p in train_files)
    cache = None
    if cache_dir is not None and len(paths) >= CACHE_FROM:
        key = _cache_key(root, classes, (train_files, test_files))
        cache = Path(cache_dir).expanduser() / f"imagefolder-{key}.npz"
        cached = _read_cache(cache, classes, (n_train, len(paths) - n_train))
        if cached is not None:
            if progress is not None:
                progress(len(paths), len(paths))
            return cached
    arrays = _decode_all(paths, progress=progress)
    size = _check_sizes(arrays, paths)
    channels = 3 if any(a.ndim == 3 for a in arrays) else 1
    label_array = np.asarray(labels, dtype=np.int64)
    tree = ImageFolderTree(
        classes=classes,
        train_pixels=_stack(arrays[:n_train], channels=channels, size=size),
        train_labels=label_array[:n_train],
        test_pixels=_stack(arrays[n_train:], channels=channels, size=size),
        test_labels=label_array[n_train:],
    )
    if cache is not None:
        _write_cache(cache, tree)
    return tree
