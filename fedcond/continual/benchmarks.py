"""Class-incremental split benchmarks built with Avalanche 0.6's current builders.

``split-digits``, ``split-mnist``, ``split-fashion-mnist`` and ``split-cifar10`` split the ten
classes of a registry dataset (:func:`fedcond.data.load_dataset`) into 5 experiences of 2
classes, in a class order drawn from the seed. The stream is made by
:func:`avalanche.benchmarks.scenarios.supervised.class_incremental_benchmark` from
:class:`~avalanche.benchmarks.utils.classification_dataset.TaskAwareClassificationDataset`
wrappers (``targets`` plus a constant task label 0, as in Avalanche's classic class-incremental
benchmarks, so that Avalanche's own buffers can be mixed with the experience data, and
strategies that read a dataset's ``task_set``, such as ``LwF``, run on them).

Each sample is ``(image, label, task=0)`` with the image already normalised: there are no
Avalanche transforms, so tensors can be read back in bulk with :func:`dataset_tensors`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.benchmarks.utils import ConstantSequence, DataAttribute, TaskLabels
from avalanche.benchmarks.utils.classification_dataset import TaskAwareClassificationDataset
from avalanche.benchmarks.utils.data import AvalancheDataset
from torch.utils.data import DataLoader, Dataset

from fedcond.config import DataConfig
from fedcond.data.registry import ArrayDataset, DatasetSpec, load_dataset

__all__ = [
    "BENCHMARKS",
    "SplitBenchmark",
    "available_benchmarks",
    "dataset_tensors",
    "make_split_benchmark",
    "seeded_class_order",
    "to_avalanche_dataset",
]

#: benchmark name -> registry dataset
BENCHMARKS: dict[str, str] = {
    "split-digits": "digits",
    "split-mnist": "mnist",
    "split-fashion-mnist": "fashion-mnist",
    "split-cifar10": "cifar10",
}


def available_benchmarks() -> list[str]:
    """Names accepted by :func:`make_split_benchmark`."""
    return sorted(BENCHMARKS)


class _TensorClassification(Dataset):
    """``(image, label)`` pairs over two tensors, with the ``targets`` list Avalanche reads."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.images = images
        self.labels = labels
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        return (image if self.transform is None else self.transform(image)), self.labels[index]


def to_avalanche_dataset(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TaskAwareClassificationDataset:
    """Wrap tensors as an Avalanche classification dataset yielding ``(x, y, 0)``.

    Parameters
    ----------
    images : torch.Tensor
        ``N x C x H x W`` float32, already normalised.
    labels : torch.Tensor
        ``N`` int64 class labels.
    transform : callable | None
        Applied to each image every time it is read (e.g. a
        :class:`~fedcond.continual.augment.MemoryAugmentation`).
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    labels = labels.to(torch.long).cpu()
    base = _TensorClassification(images.detach().cpu(), labels, transform)
    return TaskAwareClassificationDataset(
        [base],
        data_attributes=[
            DataAttribute(base.targets, "targets"),
            TaskLabels(ConstantSequence(0, len(base))),
        ],
    )


def dataset_tensors(dataset: AvalancheDataset, *, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an Avalanche dataset of ``(x, y, ...)`` samples back into ``(images, labels)``."""
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    images, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        images.append(batch[0])
        labels.append(torch.as_tensor(batch[1], dtype=torch.long))
    return torch.cat(images), torch.cat(labels)


def seeded_class_order(num_classes: int, *, seed: int) -> list[int]:
    """The class order of a stream: a permutation drawn from ``torch.Generator(seed)``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_classes, generator=generator).tolist()


def _per_class_subset(data: ArrayDataset, per_class: int | None, *, generator: torch.Generator) -> ArrayDataset:
    if per_class is None:
        return data
    if per_class <= 0:
        raise ValueError(f"per-class subsample size must be positive, got {per_class}")
    keep: list[torch.Tensor] = []
    for c in range(data.spec.num_classes):
        idx = torch.nonzero(data.labels == c).flatten()
        keep.append(idx[torch.randperm(idx.numel(), generator=generator)[:per_class]])
    order = torch.sort(torch.cat(keep)).values
    return data.subset(order)


@dataclass(frozen=True)
class SplitBenchmark:
    """A class-incremental stream and the tensors behind it.

    Attributes
    ----------
    name : str
        Benchmark name (``split-mnist``...).
    scenario : CLScenario
        Avalanche's benchmark: ``train_stream`` and ``test_stream`` of experiences.
    class_order : list[int]
        Seeded order in which classes arrive.
    experience_classes : list[list[int]]
        Classes of each experience.
    train, test : ArrayDataset
        The (possibly subsampled) splits the streams were made from.
    seed : int
        The seed that drew the class order and the subsamples.
    train_per_class, test_per_class : int | None
        The subsample sizes it was built with (``None``: every image).
    """

    name: str
    scenario: CLScenario
    class_order: list[int]
    experience_classes: list[list[int]]
    train: ArrayDataset
    test: ArrayDataset
    seed: int
    train_per_class: int | None = None
    test_per_class: int | None = None

    @property
    def spec(self) -> DatasetSpec:
        """The dataset spec (shape, classes, normalisation) of the benchmark's images."""
        return self.train.spec

    @property
    def num_experiences(self) -> int:
        return len(self.experience_classes)

    def _classes_subset(self, data: ArrayDataset, classes: Sequence[int]) -> ArrayDataset:
        mask = torch.zeros_like(data.labels, dtype=torch.bool)
        for c in classes:
            mask |= data.labels == c
        return data.subset(torch.nonzero(mask).flatten())

    def train_data(self, experience: int) -> ArrayDataset:
        """Training images of one experience's classes, as tensors."""
        return self._classes_subset(self.train, self.experience_classes[experience])

    def test_data(self, experience: int) -> ArrayDataset:
        """Test images of one experience's classes, as tensors."""
        return self._classes_subset(self.test, self.experience_classes[experience])


def make_split_benchmark(
    name: str,
    *,
    seed: int = 0,
    data_dir: str | Path | None = None,
    download: bool = False,
    num_experiences: int = 5,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
) -> SplitBenchmark:
    """Build a class-incremental split benchmark.

    Parameters
    ----------
    name : str
        ``split-digits`` (bundled data), ``split-mnist``, ``split-fashion-mnist`` or
        ``split-cifar10``.
    seed : int
        Draws the class order (and the optional subsamples).
    data_dir : str | Path | None
        torchvision-layout root for MNIST / Fashion-MNIST (the folder holding ``MNIST/`` or
        ``FashionMNIST/``); for CIFAR-10 the CIFAR-10 root itself, holding torchvision's
        ``cifar-10-batches-py/`` or the ImageFolder layout ``train/<class>/``, ``test/<class>/``.
    download : bool
        Let torchvision download MNIST, Fashion-MNIST or CIFAR-10 into ``data_dir`` when absent
        (never by default).
    num_experiences : int
        Must divide the number of classes (5 -> 2 classes per experience).
    train_per_class, test_per_class : int | None
        Keep at most this many images per class (seeded), to fit small CPU budgets.

    Raises
    ------
    ValueError
        For an unknown name or a number of experiences that does not divide the classes.
    DatasetNotFoundError
        When ``data_dir`` does not hold the dataset; the message names the expected layouts.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(available_benchmarks())}")
    splits = load_dataset(DataConfig(dataset=BENCHMARKS[name], data_dir=data_dir, download=download))
    num_classes = splits.spec.num_classes
    if num_experiences <= 0 or num_classes % num_experiences:
        raise ValueError(
            f"num_experiences={num_experiences} must be a positive divisor of the {num_classes} classes"
        )
    generator = torch.Generator().manual_seed(seed + 1)
    train = _per_class_subset(splits.train, train_per_class, generator=generator)
    test = _per_class_subset(splits.test, test_per_class, generator=generator)
    order = seeded_class_order(num_classes, seed=seed)
    per_exp = num_classes // num_experiences
    scenario = class_incremental_benchmark(
        {
            "train": to_avalanche_dataset(train.images, train.labels),
            "test": to_avalanche_dataset(test.images, test.labels),
        },
        class_order=order,
        num_experiences=num_experiences,
    )
    experience_classes = [order[i * per_exp : (i + 1) * per_exp] for i in range(num_experiences)]
    return SplitBenchmark(
        name, scenario, order, experience_classes, train, test,
        seed=seed, train_per_class=train_per_class, test_per_class=test_per_class,
    )
