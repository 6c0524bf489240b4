"""DistilledBuffer: exact budgets, importance-ordered shrinking, edge cases, caching."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcond.continual import DistilledBuffer, class_quotas
from fedcond.data.registry import ArrayDataset

from .conftest import TINY_DM


def _experience(stream, i: int) -> ArrayDataset:
    return stream.train_data(i)


def test_class_quotas_per_class_and_adaptive() -> None:
    assert class_quotas([3, 1], max_size=20, total_num_classes=10) == {3: 2, 1: 2}
    assert class_quotas([3, 1, 4], max_size=10) == {3: 4, 1: 3, 4: 3}
    assert class_quotas([], max_size=10) == {}


@settings(max_examples=200, deadline=None)
@given(max_size=st.integers(1, 300), n=st.integers(1, 40))
def test_adaptive_quotas_fill_the_budget_and_never_grow(max_size: int, n: int) -> None:
    if n > max_size:
        with pytest.raises(ValueError, match="smaller than the"):
            class_quotas(list(range(n)), max_size=max_size)
        return
    quotas = class_quotas(list(range(n)), max_size=max_size)
    assert sum(quotas.values()) == max_size
    assert min(quotas.values()) >= 1
    if n + 1 <= max_size:
        more = class_quotas(list(range(n + 1)), max_size=max_size)
        assert all(more[c] <= quotas[c] for c in quotas)


def test_budget_errors_are_named(digits_stream) -> None:
    spec = digits_stream.spec
    with pytest.raises(ValueError, match="budget must be positive"):
        class_quotas([1], max_size=0)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="memory_per_class must be a positive whole number"):
            DistilledBuffer.per_class(bad, spec=spec)
    assert DistilledBuffer.per_class(3, spec=spec, distill=TINY_DM).max_size == 3 * spec.num_classes
    # a budget divided among fewer classes than arrive would outgrow itself
    with pytest.raises(ValueError, match="11 classes seen but the budget is divided among total_num_classes=10"):
        class_quotas(list(range(11)), max_size=20, total_num_classes=10)
    with pytest.raises(ValueError, match="budget of 5 images is smaller than the 10 classes"):
        DistilledBuffer(5, spec=spec, adaptive_size=False, total_num_classes=10)
    buffer = DistilledBuffer(3, spec=spec, distill=TINY_DM)  # adaptive: fine until a 4th class arrives
    buffer.update_from_tensors(*_tensors(_experience(digits_stream, 0)))
    with pytest.raises(ValueError, match="budget of 3 images is smaller than the 4 classes"):
        buffer.update_from_tensors(*_tensors(_experience(digits_stream, 1)))


def _tensors(data: ArrayDataset) -> tuple[torch.Tensor, torch.Tensor]:
    return data.images, data.labels


def test_per_class_buffer_holds_exactly_its_budget_with_the_right_labels(digits_stream) -> None:
    buffer = DistilledBuffer.per_class(3, spec=digits_stream.spec, distill=TINY_DM)
    seen: list[int] = []
    for i in range(3):
        data = _experience(digits_stream, i)
        buffer.update_from_tensors(data.images, data.labels)
        seen += digits_stream.experience_classes[i]
        assert buffer.class_counts() == {c: 3 for c in sorted(seen, key=seen.index)}
        assert len(buffer.buffer) == 3 * len(seen)
        labels = torch.as_tensor(list(buffer.buffer.targets))
        assert sorted(labels.tolist()) == sorted(c for c in seen for _ in range(3))
    # DM moved the images away from their real initialisation
    images, labels = buffer.tensors()
    real = digits_stream.train.images.flatten(1)
    distances = torch.cdist(images.flatten(1), real).min(1).values
    assert bool((distances > 1e-4).all())
    # oldest first; within an experience, classes in increasing order
    assert buffer.seen_classes == [c for i in range(3) for c in sorted(digits_stream.experience_classes[i])]


def test_fixed_total_budget_shrinks_older_classes_to_their_importance_prefix(digits_stream) -> None:
    buffer = DistilledBuffer(8, spec=digits_stream.spec, distill=TINY_DM)
    first = digits_stream.experience_classes[0]
    buffer.update_from_tensors(*_tensors(_experience(digits_stream, 0)))
    assert buffer.class_counts() == {c: 4 for c in first}
    before = {c: buffer._memory[c].clone() for c in first}
    buffer.update_from_tensors(*_tensors(_experience(digits_stream, 1)))
    assert len(buffer.buffer) == 8 and set(buffer.class_counts().values()) == {2}
    for c in first:
        assert torch.equal(buffer._memory[c], before[c][:2])
    buffer.update_from_tensors(*_tensors(_experience(digits_stream, 2)))
    counts = buffer.class_counts()
    assert sum(counts.values()) == len(buffer.buffer) == 8
    assert [counts[c] for c in buffer.seen_classes] == [2, 2, 1, 1, 1, 1]  # oldest get the remainder
    buffer.resize(None, 6)
    assert set(buffer.class_counts().values()) == {1} and len(buffer.buffer) == 6


def test_resize_never_grows_a_condensed_class_and_refuses_a_budget_below_the_class_count(digits_stream) -> None:
    buffer = DistilledBuffer(4, spec=digits_stream.spec, distill=TINY_DM)
    first = digits_stream.experience_classes[0]
    buffer.update_from_tensors(*_tensors(_experience(digits_stream, 0)))
    assert buffer.class_counts() == {c: 2 for c in first}
    kept = buffer.tensors()[0].clone()
    # a larger budget cannot grow classes whose real data is gone; later classes get the room
    buffer.resize(None, 12)
    assert buffer.max_size == 12 and buffer.class_counts() == {c: 2 for c in first}
    buffer.update_from_tensors(*_tensors(_experience(digits_stream, 1)))
    counts = buffer.class_counts()
    assert [counts[c] for c in first] == [2, 2]
    assert [counts[c] for c in digits_stream.experience_classes[1]] == [3, 3]
    # four classes seen: a budget of 3 cannot hold one image each; nothing changes
    before = buffer.tensors()[0].clone()
    with pytest.raises(ValueError, match="every class needs at least one image"):
        buffer.resize(None, 3)
    assert buffer.max_size == 12 and torch.equal(buffer.tensors()[0], before)
    assert torch.equal(before[:4], kept)


def test_budget_mode_arguments_must_agree(digits_stream) -> None:
    with pytest.raises(ValueError, match="adaptive_size=False needs total_num_classes"):
        DistilledBuffer(10, spec=digits_stream.spec, adaptive_size=False)
    with pytest.raises(ValueError, match="total_num_classes is only used with adaptive_size=False"):
        DistilledBuffer(10, spec=digits_stream.spec, total_num_classes=10)


def test_class_with_a_single_sample_is_condensed_from_noise_to_its_full_quota(digits_stream, caplog) -> None:
    data = _experience(digits_stream, 0)
    a, b = digits_stream.experience_classes[0]
    keep = torch.cat([torch.nonzero(data.labels == a).flatten(), torch.nonzero(data.labels == b).flatten()[:1]])
    buffer = DistilledBuffer.per_class(3, spec=digits_stream.spec, distill=TINY_DM)
    with caplog.at_level(logging.WARNING, logger="fedcond.continual.buffers"):
        buffer.update_from_tensors(data.images[keep], data.labels[keep])
    assert buffer.class_counts() == {a: 3, b: 3}
    assert "fewer real images than the quota" in caplog.text and str(b) in caplog.text


def test_bad_experiences_are_refused(digits_stream) -> None:
    buffer = DistilledBuffer.per_class(2, spec=digits_stream.spec, distill=TINY_DM)
    with pytest.raises(ValueError, match="empty experience"):
        buffer.update_from_tensors(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the 10 classes"):
        buffer.update_from_tensors(torch.zeros(2, 1, 8, 8), torch.tensor([0, 12]))


def test_a_returning_class_is_recondensed_within_its_quota(digits_stream) -> None:
    buffer = DistilledBuffer.per_class(2, spec=digits_stream.spec, distill=TINY_DM)
    data = _experience(digits_stream, 0)
    buffer.update_from_tensors(data.images, data.labels)
    old = buffer.tensors()[0].clone()
    buffer.update_from_tensors(data.images, data.labels)
    assert buffer.class_counts() == {c: 2 for c in digits_stream.experience_classes[0]}
    assert not torch.equal(buffer.tensors()[0], old)


@pytest.fixture()
def dm_runs(monkeypatch) -> list[int]:
    """One entry per DM condensation run from here on (cache reads add none)."""
    from fedcond.distill.dm import DistributionMatching

    runs: list[int] = []
    condense = DistributionMatching.condense

    def counting(self, *args, **kwargs):
        runs.append(1)
        return condense(self, *args, **kwargs)

    monkeypatch.setattr(DistributionMatching, "condense", counting)
    return runs


def test_cache_reuses_a_condensation(digits_stream, tmp_path, dm_runs) -> None:
    runs = dm_runs
    data = _experience(digits_stream, 0)
    first = DistilledBuffer.per_class(2, spec=digits_stream.spec, distill=TINY_DM, cache_dir=tmp_path)
    first.update_from_tensors(data.images, data.labels)
    assert len(runs) == 1 and list(tmp_path.glob("dm-*.npz"))
    second = DistilledBuffer.per_class(2, spec=digits_stream.spec, distill=TINY_DM, cache_dir=tmp_path)
    second.update_from_tensors(data.images, data.labels)
    assert len(runs) == 1, "the second buffer ran DM instead of reading the cache"
    assert second.condense_seconds == 0
    assert torch.equal(first.tensors()[0], second.tensors()[0])
    assert len(second.synthetic_set()) == 4


def test_cache_key_depends_on_the_data(digits_stream, tmp_path, dm_runs) -> None:
    # same DM settings, other data: a fresh condensation, never the cached one of other classes
    runs = dm_runs
    spec = digits_stream.spec
    first = DistilledBuffer.per_class(2, spec=spec, distill=TINY_DM, cache_dir=tmp_path)
    first.update_from_tensors(*_tensors(_experience(digits_stream, 0)))
    second = DistilledBuffer.per_class(2, spec=spec, distill=TINY_DM, cache_dir=tmp_path)
    second.update_from_tensors(*_tensors(_experience(digits_stream, 1)))
    assert len(runs) == 2, "the second experience was read from the first one's cache entry"
    assert len(list(tmp_path.glob("dm-*.npz"))) == 2
    assert second.seen_classes == sorted(digits_stream.experience_classes[1])
    assert second.class_counts() == {c: 2 for c in digits_stream.experience_classes[1]}
    uncached = DistilledBuffer.per_class(2, spec=spec, distill=TINY_DM)
    uncached.update_from_tensors(*_tensors(_experience(digits_stream, 1)))
    assert torch.equal(second.tensors()[0], uncached.tensors()[0])
    assert torch.equal(second.tensors()[1], uncached.tensors()[1])
    # same labels with other images, or the same images with other labels: other entries too
    images, labels = _tensors(_experience(digits_stream, 0))
    a, b = digits_stream.experience_classes[0]
    swapped = torch.where(labels == a, b, torch.where(labels == b, a, labels))
    for data in ((images.flip(-1), labels), (images, swapped)):
        other = DistilledBuffer.per_class(2, spec=spec, distill=TINY_DM, cache_dir=tmp_path)
        other.update_from_tensors(*data)
    assert len(runs) == 5 and len(list(tmp_path.glob("dm-*.npz"))) == 4  # one run: the uncached buffer


def test_multi_formation_buffer_counts_stored_images_and_replays_their_tiles(digits_stream) -> None:
    import dataclasses

    from fedcond.distill.formation import decode_formation

    buffer = DistilledBuffer.per_class(
        2, spec=digits_stream.spec, distill=dataclasses.replace(TINY_DM, factor=2)
    )
    seen: list[int] = []
    for i in range(2):
        buffer.update_from_tensors(*_tensors(_experience(digits_stream, i)))
        seen += digits_stream.experience_classes[i]
        # the budget is in stored images (equal pixels to 2 real images per class) ...
        assert buffer.class_counts() == {c: 2 for c in sorted(seen, key=seen.index)}
        assert buffer.tensors()[0].shape == (2 * len(seen), 1, 8, 8)
        # ... and replay trains on 4 decoded tiles per stored image, labels repeated in order
        assert len(buffer.buffer) == 8 * len(seen)
        targets = torch.as_tensor(list(buffer.buffer.targets))
        assert targets.tolist() == buffer.tensors()[1].repeat_interleave(4).tolist()
    stored, _ = buffer.tensors()
    assert torch.allclose(buffer.training_tensors()[0], decode_formation(stored, factor=2))
    saved = buffer.synthetic_set()
    assert saved.factor == 2 and len(saved.decoded()) == 4 * len(saved)
    # the set's record names what made it: method, images per class, init
    assert (saved.meta["method"], saved.meta["ipc"], saved.meta["init"]) == ("dm-continual", 2, TINY_DM.init)


def test_every_replay_kind_gives_an_adaptive_budgets_extra_images_to_the_oldest_classes(digits_stream) -> None:
    # Avalanche keeps the classes seen in a set, so its random / herding buffers handed the
    # max_size % n extra images to the smallest class ids (newer classes could out-rank older
    # ones); DistilledBuffer gives them to the oldest. All three must keep the same counts.
    from types import SimpleNamespace

    from fedcond.continual.benchmarks import to_avalanche_dataset
    from fedcond.continual.policies import make_storage_policy
    from fedcond.models import get_model

    spec = digits_stream.spec
    agent = SimpleNamespace(model=get_model("convnet", spec, generator=torch.Generator().manual_seed(0)), device="cpu")
    buffers = {kind: make_storage_policy(kind, spec=spec, memory_per_class=1, max_memory=27, distill=TINY_DM)
               for kind in ("random", "herding", "distilled")}
    arrival: list[int] = []
    for i in range(3):
        images, labels = _tensors(_experience(digits_stream, i))
        arrival += sorted(int(c) for c in labels.unique())
        experience = SimpleNamespace(dataset=to_avalanche_dataset(images, labels))
        counts = {}
        for kind, buffer in buffers.items():
            buffer.post_adapt(agent, experience)
            held = torch.as_tensor(list(buffer.buffer.targets))
            counts[kind] = [int((held == c).sum()) for c in arrival]
        assert counts["random"] == counts["herding"] == counts["distilled"], (i, counts)
    assert counts["distilled"] == [5, 5, 5, 4, 4, 4]
    assert arrival != sorted(arrival)  # the stream's class order is shuffled: the test can tell


def test_herding_buffer_keeps_the_herding_prefix_of_each_class(digits_stream) -> None:
    # the images kept for a class are the first k of herding_order on the learner's embeddings
    # of that class's images (model.embed, eval mode), not any k images of the class
    from types import SimpleNamespace

    from fedcond.continual.benchmarks import to_avalanche_dataset
    from fedcond.continual.herding import HerdingBuffer
    from fedcond.distill.coreset import herding_order
    from fedcond.models import get_model

    k = 3
    model = get_model("convnet", digits_stream.spec, generator=torch.Generator().manual_seed(0))
    buffer = HerdingBuffer(k * 10, adaptive_size=False, total_num_classes=10)
    agent = SimpleNamespace(model=model, device="cpu")
    differs_from_dataset_order = False
    for i in range(2):
        images, labels = _tensors(_experience(digits_stream, i))
        buffer.post_adapt(agent, SimpleNamespace(dataset=to_avalanche_dataset(images, labels)))
        kept_images = torch.stack([sample[0] for sample in buffer.buffer])
        kept_labels = torch.as_tensor(list(buffer.buffer.targets))
        model.eval()
        for c in digits_stream.experience_classes[i]:
            own = images[labels == c]
            with torch.no_grad():
                features = model.embed(own).flatten(1)
            expected = set(herding_order(features, k=k).tolist())
            kept = kept_images[kept_labels == c]
            assert len(kept) == k
            # index in `own` of every kept image (exact copies of the experience's images)
            matches = (kept.flatten(1)[:, None, :] == own.flatten(1)[None, :, :]).all(-1)
            assert bool((matches.sum(1) == 1).all())
            assert set(matches.float().argmax(1).tolist()) == expected, c
            differs_from_dataset_order |= expected != set(range(k))
        model.train()
    assert differs_from_dataset_order  # herding picks other images than the first k: the test can tell


@pytest.mark.parametrize("method", ["herding", "gm"])
def test_the_buffer_condenses_with_any_registered_method(digits_stream, method: str, tmp_path) -> None:
    buffer = DistilledBuffer.per_class(
        2, spec=digits_stream.spec, distill=TINY_DM, method=method, cache_dir=tmp_path
    )
    data = _experience(digits_stream, 0)
    buffer.update_from_tensors(*_tensors(data))
    assert buffer.class_counts() == {c: 2 for c in sorted(set(data.labels.tolist()))}
    images, _ = buffer.tensors()
    is_real = [bool((data.images == image).flatten(1).all(1).any()) for image in images]
    assert all(is_real) if method == "herding" else not any(is_real)
    assert [p.name.split("-")[0] for p in tmp_path.iterdir()] == [method]
    assert buffer.synthetic_set().meta["method"] == f"{method}-continual"


def test_an_unknown_buffer_method_lists_the_registered_ones(digits_stream) -> None:
    with pytest.raises(ValueError, match="unknown condensation method 'kcenter'; registered: dm, gm"):
        DistilledBuffer.per_class(2, spec=digits_stream.spec, method="kcenter")
