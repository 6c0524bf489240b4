"""Split benchmarks: Avalanche streams with seeded class order and the right data."""

from __future__ import annotations

import pytest

from fedcond.continual import dataset_tensors, make_split_benchmark, seeded_class_order


def test_split_digits_has_five_experiences_of_two_disjoint_classes(digits_stream) -> None:
    train_stream = list(digits_stream.scenario.train_stream)
    test_stream = list(digits_stream.scenario.test_stream)
    assert len(train_stream) == len(test_stream) == 5
    seen: set[int] = set()
    for i, (train_exp, test_exp) in enumerate(zip(train_stream, test_stream, strict=True)):
        classes = set(digits_stream.experience_classes[i])
        assert len(classes) == 2 and not classes & seen
        seen |= classes
        _, train_labels = dataset_tensors(train_exp.dataset)
        _, test_labels = dataset_tensors(test_exp.dataset)
        assert set(train_labels.tolist()) == classes == set(test_labels.tolist())
        assert set(train_exp.classes_in_this_experience) == classes
        assert len(train_labels) == 2 * 30  # train_per_class subsample
    assert seen == set(range(10))
    assert digits_stream.class_order == [c for exp in digits_stream.experience_classes for c in exp]


def test_experience_samples_are_x_y_task0_with_the_registry_images(digits_stream) -> None:
    exp = digits_stream.scenario.train_stream[0]
    x, y, t = exp.dataset[0]
    assert x.shape == (1, 8, 8) and t == 0
    images, labels = dataset_tensors(exp.dataset)
    expected = digits_stream.train_data(0)
    # same images and labels as the registry's tensors (order may differ)
    key = lambda imgs, labs: sorted(zip(labs.tolist(), imgs.flatten(1).sum(1).tolist(), strict=True))  # noqa: E731
    assert key(images, labels) == key(expected.images, expected.labels)


def test_class_order_is_seeded() -> None:
    assert seeded_class_order(10, seed=3) == seeded_class_order(10, seed=3)
    assert seeded_class_order(10, seed=3) != seeded_class_order(10, seed=4)
    a = make_split_benchmark("split-digits", seed=1)
    b = make_split_benchmark("split-digits", seed=1)
    assert a.experience_classes == b.experience_classes
    assert sorted(a.class_order) == list(range(10))


def test_bad_benchmark_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="unknown benchmark 'split-cifar'"):
        make_split_benchmark("split-cifar")
    with pytest.raises(ValueError, match="num_experiences=3"):
        make_split_benchmark("split-digits", num_experiences=3)
    with pytest.raises(ValueError, match="subsample size must be positive"):
        make_split_benchmark("split-digits", train_per_class=0)
