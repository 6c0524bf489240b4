"""DistilledReplayPlugin with Avalanche's Naive strategy on split-digits."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.plugins.strategy_plugin import SupervisedPlugin
from avalanche.training.supervised import Naive

from fedcond.continual import DistilledBuffer, DistilledReplayPlugin, dataset_tensors
from fedcond.models import get_model

from .conftest import TINY_DM


class _Probe(SupervisedPlugin):
    """Records the dataloader type and the labels of every training minibatch, per experience."""

    def __init__(self) -> None:
        super().__init__()
        self.loaders: list[str] = []
        self.labels: list[set[int]] = []

    def before_training_epoch(self, strategy, **kwargs) -> None:
        self.loaders.append(type(strategy.dataloader).__name__)
        self.labels.append(set())

    def after_forward(self, strategy, **kwargs) -> None:
        self.labels[-1] |= set(strategy.mb_y.tolist())


def test_naive_with_distilled_replay_keeps_exactly_the_budget(digits_stream) -> None:
    spec = digits_stream.spec
    model = get_model("convnet", spec, generator=torch.Generator().manual_seed(0))
    initial = [p.detach().clone() for p in model.parameters()]
    buffer = DistilledBuffer.per_class(2, spec=spec, distill=TINY_DM)
    probe = _Probe()
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=16,
        train_epochs=1,
        plugins=[DistilledReplayPlugin(buffer), probe],
        evaluator=EvaluationPlugin(loggers=[]),
    )
    seen: list[int] = []
    for i, experience in enumerate(digits_stream.scenario.train_stream):
        strategy.train(experience)
        seen += digits_stream.experience_classes[i]
        _, labels = dataset_tensors(buffer.buffer)
        assert len(buffer.buffer) == 2 * len(seen) == 4 * (i + 1)
        assert Counter(labels.tolist()) == {c: 2 for c in seen}
    # replay really happened: from the second experience the minibatches mix in old classes
    assert probe.loaders[0] != "ReplayDataLoader"
    assert all(name == "ReplayDataLoader" for name in probe.loaders[1:])
    for i in range(1, 5):
        old = set(digits_stream.class_order[: 2 * i])
        assert probe.labels[i] & old, f"experience {i} never replayed an old class"
    assert any(not torch.equal(a, b) for a, b in zip(initial, model.parameters(), strict=True))


def test_plugin_refuses_what_is_not_a_buffer() -> None:
    with pytest.raises(TypeError, match="ExemplarsBuffer"):
        DistilledReplayPlugin(object())  # type: ignore[arg-type]


def test_plugin_refuses_bad_batch_sizes(digits_stream) -> None:
    buffer = DistilledBuffer.per_class(1, spec=digits_stream.spec, distill=TINY_DM)
    with pytest.raises(ValueError, match="batch_size_mem must be positive"):
        DistilledReplayPlugin(buffer, batch_size_mem=0)


@pytest.mark.parametrize(
    ("strategy_name", "options"),
    [
        ("EWC", {"ewc_lambda": 1.0}),
        # LwF reads each experience's ``task_set``: the split datasets must be task-aware
        ("LwF", {"alpha": 1.0, "temperature": 2.0}),
    ],
)
def test_plugin_works_with_another_supervised_strategy(digits_stream, strategy_name, options) -> None:
    from avalanche.training import supervised

    spec = digits_stream.spec
    model = get_model("convnet", spec, generator=torch.Generator().manual_seed(1))
    buffer = DistilledBuffer.per_class(1, spec=spec, distill=TINY_DM)
    strategy = getattr(supervised, strategy_name)(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        criterion=torch.nn.CrossEntropyLoss(),
        **options,
        train_mb_size=32,
        train_epochs=1,
        plugins=[DistilledReplayPlugin(buffer)],
        evaluator=EvaluationPlugin(loggers=[]),
    )
    for i, experience in enumerate(list(digits_stream.scenario.train_stream)[:2]):
        strategy.train(experience)
        assert len(buffer.buffer) == 2 * (i + 1)
    assert set(buffer.class_counts()) == set(digits_stream.class_order[:4])


def test_a_buffer_built_for_another_dataset_is_refused_before_training(digits_stream) -> None:
    from avalanche.training.supervised import Naive

    from fedcond.data.registry import get_spec

    mnist_spec = get_spec("mnist")
    model = get_model("convnet", digits_stream.spec, generator=torch.Generator().manual_seed(1))
    initial = [p.detach().clone() for p in model.parameters()]
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=32,
        train_epochs=1,
        plugins=[DistilledReplayPlugin(DistilledBuffer.per_class(1, spec=mnist_spec, distill=TINY_DM))],
        evaluator=EvaluationPlugin(loggers=[]),
    )
    with pytest.raises(ValueError, match=r"built for mnist images of shape \(1, 28, 28\).*\(1, 8, 8\)"):
        strategy.train(digits_stream.scenario.train_stream[0])
    assert all(torch.equal(a, b) for a, b in zip(initial, model.parameters(), strict=True))  # nothing trained
