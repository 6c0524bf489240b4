"""Split benchmarks: Avalanche streams with seeded class order and the right data."""

from __future__ import annotations

import pytest

from fedcond.config import ContinualConfig, choices_of
from fedcond.continual import available_benchmarks, dataset_tensors, make_split_benchmark, seeded_class_order
from fedcond.data import DatasetNotFoundError
from fedcond.data.registry import CIFAR10_CLASSES


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
    with pytest.raises(ValueError, match="unknown benchmark 'split-svhn'"):
        make_split_benchmark("split-svhn")
    with pytest.raises(ValueError, match="num_experiences=3"):
        make_split_benchmark("split-digits", num_experiences=3)
    with pytest.raises(ValueError, match="subsample size must be positive"):
        make_split_benchmark("split-digits", train_per_class=0)


def test_the_config_accepts_exactly_the_benchmarks_that_exist() -> None:
    assert sorted(choices_of(ContinualConfig, "benchmark")) == available_benchmarks()
    assert "split-cifar10" in available_benchmarks()


def test_split_cifar10_is_five_experiences_of_two_cifar10_classes(cifar10_slice, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FEDCOND_CACHE_DIR", str(tmp_path / "cache"))
    bench = make_split_benchmark("split-cifar10", seed=0, data_dir=cifar10_slice)
    assert bench.spec.name == "cifar10" and bench.spec.class_names == CIFAR10_CLASSES
    assert bench.num_experiences == 5
    order = bench.class_order
    assert sorted(order) == list(range(10))
    assert bench.experience_classes == [order[i : i + 2] for i in range(0, 10, 2)]
    for i, (train_exp, test_exp) in enumerate(
        zip(bench.scenario.train_stream, bench.scenario.test_stream, strict=True)
    ):
        images, train_labels = dataset_tensors(train_exp.dataset)
        _, test_labels = dataset_tensors(test_exp.dataset)
        assert images.shape[1:] == (3, 32, 32)
        assert set(train_labels.tolist()) == set(bench.experience_classes[i]) == set(test_labels.tolist())
        assert len(train_labels) == 2 * 12 and len(test_labels) == 2 * 4  # the slice's images per class


def test_split_cifar10_in_a_folder_without_cifar10_names_both_layouts(cifar10_slice, tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-batches-py.*ImageFolder layout .*train/<class>"):
        make_split_benchmark("split-cifar10", data_dir=tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"needs --data-dir"):
        make_split_benchmark("split-cifar10")
    # the folder above the CIFAR-10 root, as ../shared/data is above cifar10-jpeg: the error names the root
    above = tmp_path / "data"
    above.mkdir()
    (above / "cifar10-jpeg").symlink_to(cifar10_slice, target_is_directory=True)
    with pytest.raises(DatasetNotFoundError, match="cifar10-jpeg holds one: point --data-dir at that folder"):
        make_split_benchmark("split-cifar10", data_dir=above)
