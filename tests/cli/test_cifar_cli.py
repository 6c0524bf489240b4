"""CIFAR-shaped data (3x32x32, ten named classes) through every command, on a 12-per-class slice
of the shared CIFAR-10 JPEG folder: class names in the figures, progress of the long steps."""

from __future__ import annotations

import json

import pytest

from fedcond.cli.main import main
from fedcond.data.registry import CIFAR10_CLASSES
from fedcond.distill.synthetic import SyntheticSet
from fedcond.plots import figure_classes

TINY_EVAL = ["--eval-runs", "1", "--eval-epochs", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def distilled(cifar10_slice, tmp_path_factory):
    """``fedcond distill --dataset cifar10`` on the slice (ipc 1, 2 iterations): its folder and stderr."""
    out = tmp_path_factory.mktemp("cifar-distill") / "run"
    code = main(["distill", "--dataset", "cifar10", "--data-dir", str(cifar10_slice), "--ipc", "1",
                 "--iterations", "2", "--no-bf16", "--out", str(out), *TINY_EVAL])
    assert code == 0
    return out


def test_distill_reads_the_jpeg_folder_as_cifar10_and_names_the_grid_rows(distilled) -> None:
    metrics = json.loads((distilled / "metrics.json").read_text())
    assert metrics["dataset"] == "cifar10" and metrics["eval_runs"] == 1
    assert 0.0 <= metrics["test_accuracy_mean"] <= 1.0
    synthetic = SyntheticSet.load(distilled / "synthetic.npz", num_classes=10, image_shape=(3, 32, 32))
    assert len(synthetic) == 10 and synthetic.meta["dataset"] == "cifar10"
    assert figure_classes(distilled / "synthetic.png") == list(CIFAR10_CLASSES)


def test_evaluation_and_reading_report_progress(cifar10_slice, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["coreset", "--method", "random", "--dataset", "imagefolder", "--data-dir", str(cifar10_slice),
                 "--ipc", "2", "--out", str(out), "--eval-runs", "2", "--eval-epochs", "3", "--device", "cpu"]) == 0
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines; compare words
    assert "read imagefolder from" in err and "120 train / 40 test images" in err
    for run in (1, 2):
        for epoch in (1, 2, 3):
            assert f"eval network {run}/2, epoch {epoch}/3" in err
        assert f"eval network {run}/2: trained, testing on 40 images" in err
    accuracies = json.loads((out / "metrics.json").read_text())["test_accuracies"]
    assert f"eval network 2/2: {100 * accuracies[1]:.2f}% test accuracy" in err
    assert figure_classes(out / "synthetic.png") == list(CIFAR10_CLASSES)


def test_herding_coreset_on_the_slice(cifar10_slice, tmp_path) -> None:
    out = tmp_path / "run"
    assert main(["coreset", "--method", "herding", "--dataset", "cifar10", "--data-dir", str(cifar10_slice),
                 "--ipc", "1", "--out", str(out), *TINY_EVAL]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "herding" and metrics["dataset"] == "cifar10"
    assert figure_classes(out / "synthetic.png") == list(CIFAR10_CLASSES)


def test_audit_names_the_class_of_every_image_in_its_pairs(distilled, cifar10_slice, tmp_path) -> None:
    out = tmp_path / "audit"
    assert main(["audit", "--synthetic", str(distilled / "synthetic.npz"), "--data-dir", str(cifar10_slice),
                 "--shadow-models", "1", "--target-epochs", "2", "--reference-size", "40", "--quantile", "0.1",
                 "--out", str(out), "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "cifar10"
    rows = figure_classes(out / "nearest_neighbours.png")
    assert len(rows) == 8 and all(len(row) == 3 for row in rows)
    assert all(name in CIFAR10_CLASSES for row in rows for name in row)
    # a real-init set after two DM steps: each synthetic image's nearest training image is its own class
    assert all(row[0] == row[1] for row in rows)


def test_simulate_in_process_on_the_slice(cifar10_slice, tmp_path) -> None:
    out = tmp_path / "sim"
    code = main(["simulate", "--engine", "inprocess", "--dataset", "imagefolder", "--data-dir", str(cifar10_slice),
                 "--num-clients", "2", "--partition", "iid", "--rounds", "1", "--ipc", "1", "--iterations", "2",
                 "--set", "server-epochs=2", "--set", "distill.mixed-precision=false", "--device", "cpu",
                 "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "imagefolder" and metrics["num_clients"] == 2
    assert metrics["history"][1]["accepted"] == 2
    assert 0.0 <= metrics["test_accuracy"] <= 1.0


def test_a_corrupt_jpeg_in_the_tree_is_one_line_naming_it(cifar10_slice, tmp_path, capsys) -> None:
    import shutil

    root = tmp_path / "cifar"
    shutil.copytree(cifar10_slice, root)
    victim = sorted((root / "train" / "cat").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:200])
    code = main(["distill", "--dataset", "cifar10", "--data-dir", str(root), "--ipc", "1", "--iterations", "1",
                 "--eval-runs", "0", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{victim} is not a readable image" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # the failed command leaves no empty run folder
