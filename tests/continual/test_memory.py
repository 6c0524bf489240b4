"""ReplayMemory: every replay kind satisfies the protocol, and the runner reads memories through it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from avalanche.training.storage_policy import ExemplarsBuffer

from fedcond.continual import MEMORY_KINDS, RandomBuffer, ReplayMemory, make_storage_policy, to_avalanche_dataset
from fedcond.continual.runner import _memory_counts
from fedcond.models import get_model

from .conftest import TINY_DM


@pytest.mark.parametrize("kind", MEMORY_KINDS)
def test_every_memory_kind_is_a_replay_memory_and_an_avalanche_buffer(digits_stream, kind: str) -> None:
    buffer = make_storage_policy(kind, spec=digits_stream.spec, memory_per_class=2, distill=TINY_DM)

    assert isinstance(buffer, ReplayMemory)
    assert isinstance(buffer, ExemplarsBuffer)
    assert buffer.class_counts() == {}
    assert buffer.condense_seconds == 0.0


@pytest.mark.parametrize("kind", MEMORY_KINDS)
def test_class_counts_are_the_images_held_per_class(digits_stream, kind: str) -> None:
    spec = digits_stream.spec
    buffer = make_storage_policy(kind, spec=spec, memory_per_class=2, distill=TINY_DM)
    agent = SimpleNamespace(model=get_model("convnet", spec, generator=torch.Generator().manual_seed(0)), device="cpu")

    for i in range(2):
        data = digits_stream.train_data(i)
        buffer.post_adapt(agent, SimpleNamespace(dataset=to_avalanche_dataset(data.images, data.labels)))

    held = torch.as_tensor(list(buffer.buffer.targets))
    seen = digits_stream.experience_classes[0] + digits_stream.experience_classes[1]
    assert buffer.class_counts() == {c: 2 for c in seen}
    assert sorted(buffer.class_counts().items()) == [(c, int((held == c).sum())) for c in sorted(seen)]
    assert (buffer.condense_seconds > 0) == (kind == "distilled")


def test_the_random_buffer_hands_extra_images_to_the_oldest_classes() -> None:
    assert list(RandomBuffer(7, adaptive_size=True).seen_classes) == []
    buffer = RandomBuffer(7)
    buffer.seen_classes.update([5, 2])
    buffer.seen_classes.update([0])
    assert list(buffer.seen_classes) == [2, 5, 0]


class _CountsOnly:
    """A memory that answers the protocol and nothing else (no Avalanche buffer behind it)."""

    max_size = 10
    buffer = None
    condense_seconds = 0.0

    def post_adapt(self, agent_state: object, exp: object) -> None:
        raise AssertionError("counting must not update the memory")

    def class_counts(self) -> dict[int, int]:
        return {7: 2, 1: 3}


def test_the_runner_counts_memory_through_the_protocol() -> None:
    assert _memory_counts(_CountsOnly()) == (5, {1: 3, 7: 2})
    assert _memory_counts(None) == (0, {})
