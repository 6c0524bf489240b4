"""DSA augmentation of replayed memory images (``MemoryAugmentation`` + the plugin option)."""

from __future__ import annotations

import pytest
import torch
from avalanche.training.storage_policy import ExemplarsBuffer

from fedcond.config import ConfigError, ContinualConfig
from fedcond.continual import (
    DistilledReplayPlugin,
    MemoryAugmentation,
    dataset_tensors,
    make_replay_plugin,
    to_avalanche_dataset,
)
from fedcond.continual.benchmarks import SplitBenchmark


def test_augmentation_changes_images_and_is_reproducible_from_the_seed(digits_stream: SplitBenchmark) -> None:
    images, _ = dataset_tensors(digits_stream.scenario.train_stream[0].dataset)
    first = MemoryAugmentation(digits_stream.spec, seed=3)
    second = MemoryAugmentation(digits_stream.spec, seed=3)
    out_a = torch.stack([first(x) for x in images[:20]])
    out_b = torch.stack([second(x) for x in images[:20]])
    assert out_a.shape == images[:20].shape
    torch.testing.assert_close(out_a, out_b)
    changed = (out_a - images[:20]).flatten(1).abs().amax(dim=1) > 1e-4
    assert changed.float().mean() > 0.5  # a few draws (e.g. a zero crop shift) can be the identity
    assert "flip" not in first.augment.transforms  # a mirrored digit is another symbol


def test_augmentation_state_dict_replays_the_same_draws(digits_stream: SplitBenchmark) -> None:
    images, _ = dataset_tensors(digits_stream.scenario.train_stream[0].dataset)
    augment = MemoryAugmentation(digits_stream.spec, seed=0)
    state = augment.state_dict()
    before = torch.stack([augment(x) for x in images[:5]])
    augment.load_state_dict(state)
    torch.testing.assert_close(torch.stack([augment(x) for x in images[:5]]), before)


class _Repeat(torch.utils.data.Dataset):
    """One image, ``n`` times, through the transform (what a replay memory read looks like)."""

    def __init__(self, image: torch.Tensor, transform: MemoryAugmentation, n: int) -> None:
        self.image, self.transform, self.n = image, transform, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.image)


def test_dataloader_workers_draw_their_own_transforms_every_epoch(digits_stream: SplitBenchmark) -> None:
    """Workers hold copies of the transform: copied generators would repeat each other and every epoch."""
    images, _ = dataset_tensors(digits_stream.scenario.train_stream[0].dataset)
    augment = MemoryAugmentation(digits_stream.spec, seed=0)
    loader = torch.utils.data.DataLoader(
        _Repeat(images[0], augment, 4), batch_size=2, num_workers=2, generator=torch.Generator().manual_seed(0)
    )
    epochs = [torch.cat(list(loader)) for _ in range(2)]
    first = epochs[0]
    # worker 0 read items 0-1, worker 1 items 2-3: with copied generators both pairs would match
    assert not torch.equal(first[:2], first[2:])
    assert not torch.equal(epochs[0], epochs[1])  # a new epoch, new transforms
    rerun = torch.utils.data.DataLoader(
        _Repeat(images[0], MemoryAugmentation(digits_stream.spec, seed=0), 4), batch_size=2, num_workers=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(torch.cat(list(rerun)), first)  # reproducible from the seeds


def test_augmentation_rejects_an_image_of_the_wrong_shape(digits_stream: SplitBenchmark) -> None:
    augment = MemoryAugmentation(digits_stream.spec, seed=0)
    with pytest.raises(ValueError, match="shape"):
        augment(torch.zeros(1, 28, 28))


class _FixedBuffer(ExemplarsBuffer):
    """A storage policy holding given images (what any Avalanche buffer exposes: ``buffer``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__(len(labels))
        self.buffer = to_avalanche_dataset(images, labels)

    def post_adapt(self, agent_state, exp) -> None:
        pass

    def resize(self, strategy, new_size: int) -> None:
        self.max_size = new_size


class _StrategyStub:
    """What the plugin's ``before_training_exp`` reads from a strategy."""

    def __init__(self, dataset, mb_size: int) -> None:
        self.adapted_dataset = dataset
        self.train_mb_size = mb_size
        self.dataloader = None


def test_plugin_augments_memory_images_only(digits_stream: SplitBenchmark) -> None:
    current_images, current_labels = dataset_tensors(digits_stream.scenario.train_stream[1].dataset)
    memory_images, memory_labels = dataset_tensors(digits_stream.scenario.train_stream[0].dataset)
    buffer = _FixedBuffer(memory_images[:8], memory_labels[:8])
    plugin = make_replay_plugin(buffer, memory_augmentation=MemoryAugmentation(digits_stream.spec, seed=0))
    assert isinstance(plugin, DistilledReplayPlugin)  # any buffer, with the same augmentation
    stub = _StrategyStub(to_avalanche_dataset(current_images, current_labels), mb_size=16)
    plugin.before_training_exp(stub)
    memory_classes = set(memory_labels.tolist())
    seen_memory = seen_current = memory_as_stored = 0
    for x, y, _ in stub.dataloader:
        for image, label in zip(x, y.tolist(), strict=True):
            exact = (image - (memory_images[:8] if label in memory_classes else current_images)).flatten(1)
            is_stored = bool((exact.abs().amax(dim=1) == 0).any())
            if label in memory_classes:
                seen_memory += 1
                memory_as_stored += is_stored
            else:
                seen_current += 1
                assert is_stored  # the experience's own images are replayed untouched
    assert seen_memory > 0 and seen_current == len(current_labels)
    assert memory_as_stored / seen_memory < 0.5  # augmented (a few draws can be the identity)
    # the stored memory itself is unchanged
    torch.testing.assert_close(dataset_tensors(buffer.buffer)[0], memory_images[:8])


def test_plugin_without_augmentation_replays_stored_images(digits_stream: SplitBenchmark) -> None:
    current_images, current_labels = dataset_tensors(digits_stream.scenario.train_stream[1].dataset)
    memory_images, memory_labels = dataset_tensors(digits_stream.scenario.train_stream[0].dataset)
    buffer = _FixedBuffer(memory_images[:8], memory_labels[:8])
    stub = _StrategyStub(to_avalanche_dataset(current_images, current_labels), mb_size=16)
    DistilledReplayPlugin(buffer).before_training_exp(stub)
    memory_classes = set(memory_labels.tolist())
    seen_memory = 0
    for x, y, _ in stub.dataloader:
        for image, label in zip(x, y.tolist(), strict=True):
            if label in memory_classes:
                seen_memory += 1
                assert bool(((image - memory_images[:8]).flatten(1).abs().amax(dim=1) == 0).any())
    assert seen_memory > 0, "the plugin mixed no memory image into the batches"


def test_memory_augmentation_needs_replay_with_a_memory() -> None:
    with pytest.raises(ConfigError, match="augment_memory"):
        ContinualConfig(replay="none", augment_memory=True)
    with pytest.raises(ConfigError, match="augment_memory"):
        ContinualConfig(replay="distilled", gdumb=True, augment_memory=True)
    assert ContinualConfig(replay="random", augment_memory=True).augment_memory


def test_augmented_replay_is_reproducible_from_the_seed(digits_stream: SplitBenchmark) -> None:
    from fedcond.continual import run_continual

    from .conftest import tiny_config

    config = tiny_config(replay="random", augment_memory=True, memory_per_class=3)
    first = run_continual(config, benchmark=digits_stream)
    second = run_continual(config, benchmark=digits_stream)
    assert first.accuracy_matrix == second.accuracy_matrix
    assert first.memory_per_experience == [6, 12, 18, 24, 30]
    assert first.to_metrics()["augment_memory"] is True


@pytest.mark.parametrize("augment_memory", [True, False])
def test_augment_memory_decides_whether_the_replay_plugin_gets_an_augmentation(
    digits_stream: SplitBenchmark, monkeypatch, augment_memory: bool
) -> None:
    from fedcond.continual import run_continual, runner

    from .conftest import tiny_config

    given: list[object] = []
    original = runner.make_replay_plugin

    def spying(buffer, **kwargs):
        given.append(kwargs.get("memory_augmentation"))
        return original(buffer, **kwargs)

    monkeypatch.setattr(runner, "make_replay_plugin", spying)
    run_continual(tiny_config(replay="random", augment_memory=augment_memory), benchmark=digits_stream)
    assert len(given) == 1
    if augment_memory:
        assert isinstance(given[0], MemoryAugmentation)
    else:
        assert given[0] is None
