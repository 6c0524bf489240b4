"""run_continual: equal memory between replay kinds, reproducibility, metrics, bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedcond.config import ConfigError
from fedcond.continual import (
    MEMORY_KINDS,
    average_accuracy,
    forgetting,
    make_storage_policy,
    run_continual,
)

from .conftest import tiny_config


def test_every_replay_kind_holds_the_same_memory_after_every_experience(digits_stream) -> None:
    results = {kind: run_continual(tiny_config(replay=kind), benchmark=digits_stream) for kind in MEMORY_KINDS}
    for kind, result in results.items():
        assert result.memory_per_experience == [4, 8, 12, 16, 20], kind
        assert result.memory_class_counts[-1] == {c: 2 for c in range(10)}, kind
        assert result.memory_images == 20
        assert len(result.accuracy_matrix) == 5 and all(len(row) == 5 for row in result.accuracy_matrix)


def test_fixed_total_budget_is_equal_across_kinds_too(digits_stream) -> None:
    sizes = {}
    for kind in MEMORY_KINDS:
        result = run_continual(tiny_config(replay=kind, max_memory=15, gdumb=True), benchmark=digits_stream)
        sizes[kind] = result.memory_per_experience
        assert sum(result.memory_class_counts[-1].values()) == 15
        assert set(result.memory_class_counts[-1]) == set(range(10))
    assert sizes["random"] == sizes["herding"] == sizes["distilled"] == [15] * 5


def test_a_run_is_reproducible_from_its_seed(digits_stream) -> None:
    config = tiny_config(replay="distilled", seed=0)
    first = run_continual(config, benchmark=digits_stream)
    again = run_continual(config, benchmark=digits_stream)
    assert first.accuracy_matrix == again.accuracy_matrix
    assert first.memory_class_counts == again.memory_class_counts
    random_a = run_continual(tiny_config(replay="random"), benchmark=digits_stream)
    random_b = run_continual(tiny_config(replay="random"), benchmark=digits_stream)
    assert random_a.accuracy_matrix == random_b.accuracy_matrix


def test_another_seed_gives_another_class_order() -> None:
    a = run_continual(tiny_config(replay="none", seed=0))
    b = run_continual(tiny_config(replay="none", seed=5))
    assert a.class_order != b.class_order


def test_gdumb_trains_on_the_memory_alone_and_beats_chance(digits_stream) -> None:
    result = run_continual(
        tiny_config(replay="herding", gdumb=True, memory_per_class=5, gdumb_epochs=30), benchmark=digits_stream
    )
    assert result.memory_per_experience == [10, 20, 30, 40, 50]
    assert result.final_average_accuracy > 0.3  # 10 classes: chance is 0.1
    metrics = result.to_metrics()
    for key in ("benchmark", "replay", "memory_images", "final_average_accuracy", "forgetting", "accuracy_matrix"):
        assert key in metrics


def test_accuracy_matrix_scores_each_column_on_its_own_experience(digits_stream) -> None:
    # class-incremental fine-tuning without replay: after experience i the network predicts only
    # experience i's classes, so A[i][i] is high and every other column is (near) zero
    # (seed 0, 3 epochs: diagonal 0.95 0.90 0.55 1.00 0.90, everything else 0.0)
    matrix = run_continual(tiny_config(replay="none", epochs=3), benchmark=digits_stream).accuracy_matrix
    assert matrix[0][0] > 0.6 and all(a < 0.1 for a in matrix[0][1:])
    assert matrix[-1][-1] > 0.6 and all(a < 0.1 for a in matrix[-1][:-1])
    for i, row in enumerate(matrix):
        assert row[i] > 0.4, (i, row)
        assert all(a < 0.1 for j, a in enumerate(row) if j != i), (i, row)


def test_gdumb_trains_each_fresh_network_on_exactly_the_memory(digits_stream, monkeypatch) -> None:
    from fedcond.continual import runner

    trained: list[torch.Tensor] = []
    original = runner.train_with_recipe

    def recording(model, images, labels, *args, **kwargs):
        trained.append(labels.detach().cpu().clone())
        return original(model, images, labels, *args, **kwargs)

    monkeypatch.setattr(runner, "train_with_recipe", recording)
    result = run_continual(tiny_config(replay="random", gdumb=True, gdumb_epochs=1), benchmark=digits_stream)
    assert result.memory_per_experience == [4, 8, 12, 16, 20]
    assert [len(labels) for labels in trained] == result.memory_per_experience
    for i, labels in enumerate(trained):
        classes, counts = torch.unique(labels, return_counts=True)
        assert {int(c): int(n) for c, n in zip(classes, counts, strict=True)} == result.memory_class_counts[i]
        assert set(classes.tolist()) == {c for e in range(i + 1) for c in digits_stream.experience_classes[e]}


def test_joint_is_a_single_row_without_forgetting(digits_stream) -> None:
    result = run_continual(tiny_config(replay="joint"), benchmark=digits_stream)
    assert len(result.accuracy_matrix) == 1 and result.forgetting is None and result.memory_images == 0


def test_accuracy_and_forgetting_on_a_known_matrix() -> None:
    matrix = [[0.9, 0.0, 0.0], [0.6, 0.8, 0.0], [0.3, 0.7, 0.9]]
    assert average_accuracy(matrix) == pytest.approx((0.3 + 0.7 + 0.9) / 3)
    assert forgetting(matrix) == pytest.approx(((0.9 - 0.3) + (0.8 - 0.7)) / 2)
    assert forgetting([[0.5, 0.5]]) is None
    with pytest.raises(ValueError, match="empty"):
        average_accuracy([])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"memory_per_class": 0}, "must be >= 1 for replay"),
        ({"memory_per_class": -2}, "'memory_per_class' must be >= 0"),
        ({"replay": "reservoir"}, "'replay' must be one of none, random, herding, distilled, joint; got 'reservoir'"),
        ({"replay": "none", "gdumb": True}, "GDumb trains on the memory alone"),
        ({"epochs": 0}, "'epochs' must be >= 1"),
        ({"max_memory": 0}, "'max_memory' must be >= 1"),
    ],
)
def test_bad_configurations_are_named(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(**overrides)


def test_a_total_budget_smaller_than_the_classes_is_refused(digits_stream) -> None:
    for kind in MEMORY_KINDS:
        with pytest.raises(ValueError, match="budget of 7 images is smaller than the 10 classes"):
            make_storage_policy(kind, spec=digits_stream.spec, memory_per_class=1, max_memory=7)
    with pytest.raises(ValueError, match="smaller than the 10 classes"):
        run_continual(dataclasses.replace(tiny_config(), max_memory=7), benchmark=digits_stream)


@pytest.mark.parametrize("kind", MEMORY_KINDS)
def test_a_quota_above_a_class_size_is_refused_for_every_kind(digits_stream, kind) -> None:
    # 30 training images per class: random and herding could keep at most 30 where DM makes 31
    with pytest.raises(ValueError, match=r"up to 31 images per class exceeds the training images"):
        run_continual(tiny_config(replay=kind, memory_per_class=31), benchmark=digits_stream)
    # a total budget gives the first experience's 2 classes half of it each: 70 > 30
    with pytest.raises(ValueError, match=r"up to 70 images per class .* Lower --max-memory"):
        run_continual(dataclasses.replace(tiny_config(replay=kind), max_memory=140), benchmark=digits_stream)


def test_a_quota_equal_to_the_class_size_runs_and_every_kind_holds_it(digits_stream) -> None:
    held = {
        kind: run_continual(tiny_config(replay=kind, memory_per_class=30), benchmark=digits_stream)
        .memory_per_experience
        for kind in ("random", "herding")
    }
    assert held["random"] == held["herding"] == [60, 120, 180, 240, 300]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"seed": 7}, "seed: config 7, benchmark 0"),
        ({"num_experiences": 2}, "num_experiences: config 2, benchmark 5"),
        ({"train_per_class": 20}, "train_per_class: config 20, benchmark 30"),
        ({"benchmark": "split-mnist"}, "benchmark: config 'split-mnist', benchmark 'split-digits'"),
    ],
)
def test_a_prebuilt_benchmark_other_than_the_configs_is_refused(digits_stream, overrides: dict, named: str) -> None:
    with pytest.raises(ValueError, match="does not match the config") as info:
        run_continual(tiny_config(replay="none", **overrides), benchmark=digits_stream)
    assert named in str(info.value)
