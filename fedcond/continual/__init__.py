"""Continual learning with distilled replay on Avalanche 0.6.

Users plug a :class:`DistilledBuffer` into any Avalanche supervised strategy through
:class:`DistilledReplayPlugin`, exactly as they would Avalanche's ``ReplayPlugin``::

    from avalanche.training.supervised import Naive
    from fedcond.continual import DistilledBuffer, DistilledReplayPlugin, make_split_benchmark

    bench = make_split_benchmark("split-digits", seed=0)
    buffer = DistilledBuffer.per_class(10, spec=bench.spec)
    strategy = Naive(model=model, optimizer=optimizer, plugins=[DistilledReplayPlugin(buffer)])
    for experience in bench.scenario.train_stream:
        strategy.train(experience)

:func:`run_continual` runs a whole configuration (replay none, random, herding, distilled,
joint, or the GDumb protocol) and returns the accuracy matrix.
"""

from fedcond.continual.augment import MemoryAugmentation
from fedcond.continual.benchmarks import (
    BENCHMARKS,
    SplitBenchmark,
    available_benchmarks,
    dataset_tensors,
    make_split_benchmark,
    seeded_class_order,
    to_avalanche_dataset,
)
from fedcond.continual.buffers import DistilledBuffer, class_quotas
from fedcond.continual.herding import EmbeddingHerdingSelection, HerdingBuffer
from fedcond.continual.memory import RandomBuffer, RealImageMemory, ReplayMemory
from fedcond.continual.plugins import DistilledReplayPlugin
from fedcond.continual.policies import MEMORY_KINDS, REPLAY_KINDS, make_replay_plugin, make_storage_policy
from fedcond.continual.runner import (
    ContinualResult,
    average_accuracy,
    forgetting,
    run_continual,
)

__all__ = [
    "BENCHMARKS",
    "ContinualResult",
    "DistilledBuffer",
    "DistilledReplayPlugin",
    "EmbeddingHerdingSelection",
    "HerdingBuffer",
    "MEMORY_KINDS",
    "MemoryAugmentation",
    "REPLAY_KINDS",
    "RandomBuffer",
    "RealImageMemory",
    "ReplayMemory",
    "SplitBenchmark",
    "available_benchmarks",
    "average_accuracy",
    "class_quotas",
    "dataset_tensors",
    "forgetting",
    "make_replay_plugin",
    "make_split_benchmark",
    "make_storage_policy",
    "run_continual",
    "seeded_class_order",
    "to_avalanche_dataset",
]
