"""Run one continual-learning configuration and return its accuracy matrix.

Protocols
---------
* replay (default): Avalanche's ``Naive`` fine-tuning over the experiences, with the replay
  plugin of the chosen kind (none, random, herding, distilled);
* ``joint``: Avalanche's ``JointTraining`` on the whole stream at once (the offline upper bound);
* GDumb (``gdumb=True``, the DM paper's continual-learning protocol): after each experience the
  memory absorbs it and a *fresh* network is trained on the memory alone (the DD evaluation
  recipe: SGD, DSA augmentation, ``gdumb_epochs`` epochs).

The accuracy matrix ``A[i][j]`` is the test accuracy on experience ``j``'s classes after
training on experience ``i`` (class-incremental: a 10-way prediction, no task label). Final
average accuracy is the mean of the last row; forgetting is the mean, over all experiences
but the last, of the best earlier accuracy minus the final one (Chaudhry et al. 2018).

Reproducibility: everything is seeded from ``config.seed``. Avalanche draws data-loader
shuffles and reservoir sampling from the global RNGs, so :func:`run_continual` seeds
``torch``, ``random`` and ``numpy`` globally before it starts.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import JointTraining, Naive
from torch import nn

from fedcond.config import ContinualConfig, DistillConfig, EvalConfig
from fedcond.continual.augment import MemoryAugmentation
from fedcond.continual.benchmarks import SplitBenchmark, dataset_tensors, make_split_benchmark
from fedcond.continual.buffers import class_quotas
from fedcond.continual.memory import ReplayMemory
from fedcond.continual.policies import MEMORY_KINDS, make_replay_plugin, make_storage_policy
from fedcond.devices import resolve_device
from fedcond.distill.evaluate import train_with_recipe
from fedcond.models import get_model
from fedcond.training import accuracy

__all__ = [
    "ContinualResult",
    "average_accuracy",
    "forgetting",
    "run_continual",
    "check_memory_fits",
]

logger = logging.getLogger(__name__)

ExperienceCallback = Callable[[int, int, list[float], int], None]


def average_accuracy(matrix: list[list[float]]) -> float:
    """Mean accuracy over all experiences after the last one (the last row's mean)."""
    if not matrix or not matrix[-1]:
        raise ValueError("empty accuracy matrix")
    return statistics.fmean(matrix[-1])


def forgetting(matrix: list[list[float]]) -> float | None:
    """Average forgetting: ``mean_j<T-1 (max_i<T-1 A[i][j] - A[T-1][j])``.

    ``None`` when the matrix has a single row (nothing learnt before the end).
    """
    rows = len(matrix)
    if rows < 2:
        return None
    final = matrix[-1]
    drops = [max(matrix[i][j] for i in range(j, rows - 1)) - final[j] for j in range(rows - 1)]
    return statistics.fmean(drops)


@dataclass(frozen=True)
class ContinualResult:
    """Outcome of one run.

    Attributes
    ----------
    accuracy_matrix : list[list[float]]
        ``A[i][j]``: accuracy on experience ``j``'s test classes after experience ``i``
        (a single row for ``joint``).
    memory_per_experience : list[int]
        Images stored in memory after each experience (0 without replay). A multi-formation
        distilled memory (``distill.factor`` > 1) counts stored images; each trains as
        ``factor^2`` decoded tiles.
    memory_class_counts : list[dict[int, int]]
        Images per class in memory after each experience.
    """

    benchmark: str
    replay: str
    gdumb: bool
    seed: int
    memory_per_class: int
    max_memory: int | None
    class_order: list[int]
    experience_classes: list[list[int]]
    accuracy_matrix: list[list[float]]
    memory_per_experience: list[int] = field(default_factory=list)
    memory_class_counts: list[dict[int, int]] = field(default_factory=list)
    augment_memory: bool = False
    wall_seconds: float = 0.0
    condense_seconds: float = 0.0

    @property
    def final_average_accuracy(self) -> float:
        """Mean test accuracy over all experiences after the last one was trained."""
        return average_accuracy(self.accuracy_matrix)

    @property
    def forgetting(self) -> float | None:
        """Average forgetting (best earlier minus final accuracy), ``None`` with one experience."""
        return forgetting(self.accuracy_matrix)

    @property
    def memory_images(self) -> int:
        """Images in memory at the end of the stream."""
        return self.memory_per_experience[-1] if self.memory_per_experience else 0

    def to_metrics(self) -> dict[str, Any]:
        """The ``metrics.json`` content (DESIGN.md section 3 keys first)."""
        return {
            "benchmark": self.benchmark,
            "replay": self.replay,
            "memory_images": self.memory_images,
            "final_average_accuracy": self.final_average_accuracy,
            "forgetting": self.forgetting,
            "accuracy_matrix": self.accuracy_matrix,
            "gdumb": self.gdumb,
            "augment_memory": self.augment_memory,
            "seed": self.seed,
            "memory_per_class": self.memory_per_class,
            "max_memory": self.max_memory,
            "memory_per_experience": self.memory_per_experience,
            "memory_class_counts": [{str(k): v for k, v in c.items()} for c in self.memory_class_counts],
            "class_order": self.class_order,
            "experience_classes": self.experience_classes,
            "wall_seconds": self.wall_seconds,
            "condense_seconds": self.condense_seconds,
        }


def check_memory_fits(config: ContinualConfig, bench: SplitBenchmark) -> None:
    """Refuse a memory quota larger than a class's training images.

    Every replay kind must hold the same number of images. Random and herding replay can keep
    at most the images a class has, while DM makes as many as the quota asks, so a quota above
    a class's size would compare unequal memories without a word.

    Raises
    ------
    ValueError
        Naming the quota, the classes that fall short and their sizes.
    """
    if config.replay not in MEMORY_KINDS:
        return
    counts = bench.train.class_counts().tolist()
    total = None if config.max_memory is not None else bench.spec.num_classes
    size = config.max_memory if config.max_memory is not None else config.memory_per_class * total
    seen: list[int] = []
    quota: dict[int, int] = {}
    for classes in bench.experience_classes:  # under a total budget the first classes get the most
        seen += [int(c) for c in classes]
        for c, k in class_quotas(seen, max_size=size, total_num_classes=total).items():
            quota[c] = max(quota.get(c, 0), k)
    short = {c: counts[c] for c, k in quota.items() if k > counts[c]}
    if short:
        largest = max(quota[c] for c in short)
        flag = "--max-memory" if config.max_memory is not None else "--memory-per-class"
        raise ValueError(
            f"a memory of up to {largest} images per class exceeds the training images of classes "
            f"{sorted(short)} ({min(short.values())} to {max(short.values())} each): random and herding "
            f"replay would keep fewer images than distilled replay. Lower {flag}"
            + (" or raise --train-per-class" if config.train_per_class else "")
        )


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


_AVALANCHE_NAGS = ("No loggers specified", "Call to deprecated function update")


@contextmanager
def _quiet_avalanche() -> Iterator[None]:
    """Drop Avalanche's own nagging (no loggers on purpose; its ReplayPlugin's deprecated call).

    Avalanche's ``@deprecated`` re-installs its own filter on every call, so warnings are
    recorded and everything else is re-emitted afterwards.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            yield
        finally:
            kept = [w for w in caught if not str(w.message).startswith(_AVALANCHE_NAGS)]
    for w in kept:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


@dataclass
class _Agent:
    """What Avalanche storage policies read from a strategy (GDumb mode has no strategy)."""

    model: nn.Module
    device: torch.device
    eval_mb_size: int = 512


def _check_benchmark(config: ContinualConfig, benchmark: SplitBenchmark) -> None:
    """Refuse a prebuilt stream that is not the one ``config`` describes (its results would be mislabelled)."""
    wanted = {
        "benchmark": config.benchmark,
        "seed": config.seed,
        "num_experiences": config.num_experiences,
        "train_per_class": config.train_per_class,
        "test_per_class": config.test_per_class,
    }
    built = {
        "benchmark": benchmark.name,
        "seed": benchmark.seed,
        "num_experiences": benchmark.num_experiences,
        "train_per_class": benchmark.train_per_class,
        "test_per_class": benchmark.test_per_class,
    }
    differ = [f"{key}: config {wanted[key]!r}, benchmark {built[key]!r}" for key in wanted if wanted[key] != built[key]]
    if differ:
        raise ValueError("the prebuilt benchmark does not match the config (" + "; ".join(differ) + ")")


def run_continual(
    config: ContinualConfig,
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    progress: bool = False,
    benchmark: SplitBenchmark | None = None,
    on_experience: ExperienceCallback | None = None,
) -> ContinualResult:
    """Run one configuration end to end.

    Parameters
    ----------
    config : ContinualConfig
        Benchmark, replay kind, memory, training and DM settings (``distill.seed`` is set to
        ``config.seed``).
    data_dir, download
        The dataset's folder and whether torchvision may download it (see
        :func:`~fedcond.continual.benchmarks.make_split_benchmark`).
    cache_dir : str | Path | None
        Reuse distilled memories across runs (see :class:`DistilledBuffer`).
    device : torch.device | str
        Where the model trains and the memory is condensed (``"auto"``: CUDA when available).
    progress : bool
        Show the condensation's progress bar.
    benchmark : SplitBenchmark | None
        A prebuilt stream; built from ``config`` otherwise. Its name, seed, experience count
        and subsample sizes must be ``config``'s.
    on_experience : callable | None
        ``on_experience(i, num_experiences, accuracy_row, memory_images)`` after each experience.

    Returns
    -------
    ContinualResult

    Raises
    ------
    ValueError
        When ``benchmark`` does not match ``config``, or the memory does not fit the stream.
    """
    device = resolve_device(device)
    if benchmark is not None:
        _check_benchmark(config, benchmark)
    start = time.perf_counter()
    _seed_everything(config.seed)
    bench = benchmark or make_split_benchmark(
        config.benchmark,
        seed=config.seed,
        data_dir=data_dir,
        download=download,
        num_experiences=config.num_experiences,
        train_per_class=config.train_per_class,
        test_per_class=config.test_per_class,
    )
    distill = _replace_seed(config)
    buffer = make_storage_policy(
        config.replay,
        spec=bench.spec,
        memory_per_class=config.memory_per_class,
        max_memory=config.max_memory,
        distill=distill,
        device=device,
        cache_dir=cache_dir,
        progress=progress,
    )
    check_memory_fits(config, bench)  # after the policy's own budget checks
    generator = torch.Generator().manual_seed(config.seed)
    model = get_model(config.model, bench.spec, generator=generator)
    with _quiet_avalanche():
        if config.replay == "joint":
            matrix, memory, counts = _run_joint(config, bench, model, device)
        elif config.gdumb:
            assert buffer is not None
            matrix, memory, counts = _run_gdumb(config, bench, buffer, model, device, on_experience)
        else:
            matrix, memory, counts = _run_replay(config, bench, buffer, model, device, on_experience)
    condense = buffer.condense_seconds if buffer is not None else 0.0
    return ContinualResult(
        benchmark=bench.name,
        replay=config.replay,
        gdumb=config.gdumb,
        seed=config.seed,
        memory_per_class=config.memory_per_class,
        max_memory=config.max_memory,
        class_order=bench.class_order,
        experience_classes=bench.experience_classes,
        accuracy_matrix=matrix,
        memory_per_experience=memory,
        memory_class_counts=counts,
        augment_memory=config.augment_memory,
        wall_seconds=time.perf_counter() - start,
        condense_seconds=condense,
    )


def _replace_seed(config: ContinualConfig) -> DistillConfig:
    return dataclasses.replace(config.distill, seed=config.seed)


def _accuracy_row(model: nn.Module, bench: SplitBenchmark, device: torch.device) -> list[float]:
    return [accuracy(model, bench.test_data(j), device=device) for j in range(bench.num_experiences)]


def _memory_counts(buffer: ReplayMemory | None) -> tuple[int, dict[int, int]]:
    """Stored images in memory, in total and per class (what equal-memory accounting compares)."""
    if buffer is None:
        return 0, {}
    counts = buffer.class_counts()
    return sum(counts.values()), dict(sorted(counts.items()))


def _optimizer(config: ContinualConfig, model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _strategy_kwargs(config: ContinualConfig, model: nn.Module, device: torch.device) -> dict[str, Any]:
    return {
        "model": model,
        "optimizer": _optimizer(config, model),
        "criterion": nn.CrossEntropyLoss(),
        "train_mb_size": config.batch_size,
        "train_epochs": config.epochs,
        "eval_mb_size": 512,
        "device": device,
        "evaluator": EvaluationPlugin(loggers=[]),
    }


def _run_replay(
    config: ContinualConfig,
    bench: SplitBenchmark,
    buffer: ReplayMemory | None,
    model: nn.Module,
    device: torch.device,
    on_experience: ExperienceCallback | None,
) -> tuple[list[list[float]], list[int], list[dict[int, int]]]:
    augmentation = (  # the transforms DM matched under (config.distill.augment), not the defaults
        MemoryAugmentation(bench.spec, seed=config.seed, config=config.distill.augment)
        if config.augment_memory
        else None
    )
    plugins = [make_replay_plugin(buffer, memory_augmentation=augmentation)] if buffer is not None else []
    strategy = Naive(**_strategy_kwargs(config, model, device), plugins=plugins)
    matrix, memory, counts = [], [], []
    for i, experience in enumerate(bench.scenario.train_stream):
        strategy.train(experience)
        matrix.append(_accuracy_row(model, bench, device))
        size, per_class = _memory_counts(buffer)
        memory.append(size)
        counts.append(per_class)
        logger.info("experience %d: accuracy %s, memory %d", i, [round(a, 3) for a in matrix[-1]], size)
        if on_experience is not None:
            on_experience(i, bench.num_experiences, matrix[-1], size)
    return matrix, memory, counts


def _run_joint(
    config: ContinualConfig, bench: SplitBenchmark, model: nn.Module, device: torch.device
) -> tuple[list[list[float]], list[int], list[dict[int, int]]]:
    strategy = JointTraining(**_strategy_kwargs(config, model, device))
    strategy.train(bench.scenario.train_stream)
    return [_accuracy_row(model, bench, device)], [0], [{}]


def _run_gdumb(
    config: ContinualConfig,
    bench: SplitBenchmark,
    buffer: ReplayMemory,
    model: nn.Module,
    device: torch.device,
    on_experience: ExperienceCallback | None,
) -> tuple[list[list[float]], list[int], list[dict[int, int]]]:
    recipe = EvalConfig(epochs=config.gdumb_epochs)
    agent = _Agent(model=model.to(device), device=device)
    matrix, memory, counts = [], [], []
    for i, experience in enumerate(bench.scenario.train_stream):
        buffer.post_adapt(agent, experience)
        images, labels = dataset_tensors(buffer.buffer)
        generator = torch.Generator().manual_seed(config.seed * 1000 + i)
        learner = get_model(config.model, bench.spec, generator=generator)
        train_with_recipe(learner, images, labels, recipe, spec=bench.spec, generator=generator, device=device)
        agent.model = learner  # herding's features for the next experience
        matrix.append(_accuracy_row(learner, bench, device))
        size, per_class = _memory_counts(buffer)
        memory.append(size)
        counts.append(per_class)
        if on_experience is not None:
            on_experience(i, bench.num_experiences, matrix[-1], size)
    return matrix, memory, counts
