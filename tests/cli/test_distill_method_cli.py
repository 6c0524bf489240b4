"""`fedcond distill --method NAME` and `--time-budget`: any registered condenser from the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch

from fedcond.cli import main
from fedcond.config import DistillConfig
from fedcond.data.registry import ArrayDataset
from fedcond.distill import CondensationResult, SyntheticSet, register_condenser, select_coreset
from fedcond.distill import condenser as registry

QUICK = ["--eval-runs", "0"]


@pytest.fixture
def mean_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """A third party's condenser, registered for one test: each class's mean image, ipc times."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_condenser("mean-image")
    class MeanImage:
        config_fields = frozenset({"ipc", "seed"})

        def __init__(self, config: DistillConfig, *, device: torch.device | str = "cpu") -> None:
            self.config = config

        def condense(
            self,
            data: ArrayDataset,
            *,
            start: torch.Tensor | None = None,
            on_iteration: Callable[[int, float], None] | None = None,
        ) -> CondensationResult:
            spec, ipc = data.spec, self.config.ipc
            classes = [c for c in range(spec.num_classes) if bool((data.labels == c).any())]
            means = torch.cat([data.images[data.labels == c].mean(0, keepdim=True) for c in classes])
            meta = {"dataset": spec.name, "num_classes": spec.num_classes, "image_shape": list(spec.image_shape),
                    "ipc": ipc, "method": "mean-image", "seed": self.config.seed}
            labels = torch.tensor(classes).repeat_interleave(ipc)
            return CondensationResult(SyntheticSet(means.repeat_interleave(ipc, 0), labels, meta))


def test_a_third_party_condenser_runs_through_fedcond_distill(mean_image: None, tmp_path, digits) -> None:
    out = tmp_path / "mean"
    assert main(["distill", "--method", "mean-image", "--ipc", "2", "--eval-runs", "1", "--eval-epochs", "10",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "mean-image" and metrics["ipc"] == 2 and metrics["iterations"] == 0
    assert metrics["test_accuracy_mean"] > 0.5  # a class's mean image is a fair prototype of digits
    synthetic = SyntheticSet.load(out / "synthetic.npz", num_classes=10, image_shape=(1, 8, 8))
    assert torch.allclose(synthetic.images[0], digits.train.images[digits.train.labels == 0].mean(0))


def test_a_flag_the_third_party_method_does_not_read_is_refused(mean_image: None, tmp_path, capsys) -> None:
    argv = ["distill", "--method", "mean-image", "--iterations", "5", "--lr-img", "2", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--method mean-image cannot honour --iterations, --lr-img (it reads ipc, seed)" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "kcenter"],
         "--method: unknown condensation method 'kcenter'; registered: dm, gm, herding, kmeans, random"),
        (["--method", "random", "--iterations", "5"], "--method random cannot honour --iterations"),
        (["--method", "herding", "--dp-epsilon", "1"], "--method herding cannot honour --dp-epsilon"),
        (["--method", "kmeans", "--time-budget", "5"], "--method kmeans cannot honour --time-budget"),
        (["--method", "random", "--ipc", "500"], "hold fewer than 500 images; lower --ipc"),
        (["--time-budget", "0", "--iterations", "1"], "config key 'distill.time_budget' must be > 0"),
    ],
)
def test_bad_method_input_is_one_clear_line(tmp_path, capsys, argv, message) -> None:
    assert main(["distill", *argv, *QUICK, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("method", ["random", "herding"])
def test_distill_method_and_the_coreset_alias_write_the_same_set(method: str, tmp_path, digits) -> None:
    for command in ("distill", "coreset"):
        assert main([command, "--method", method, "--ipc", "2", "--seed", "4", *QUICK,
                     "--out", str(tmp_path / command)]) == 0
    sets = [SyntheticSet.load(tmp_path / c / "synthetic.npz", num_classes=10, image_shape=(1, 8, 8))
            for c in ("distill", "coreset")]
    direct = select_coreset(digits.train, ipc=2, method=method, seed=4)
    assert torch.equal(sets[0].images, sets[1].images) and torch.equal(sets[0].images, direct.images)
    assert json.loads((tmp_path / "coreset" / "metrics.json").read_text())["method"] == method


def test_kmeans_method_from_the_cli(tmp_path) -> None:
    assert main(["distill", "--method", "kmeans", "--ipc", "2", *QUICK, "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "kmeans" and metrics["iterations"] == 0


def test_time_budget_stops_dm_and_metrics_say_so(tmp_path) -> None:
    assert main(["distill", "--ipc", "1", "--iterations", "500", "--time-budget", "0.000001", "--batch-real", "16",
                 "--no-dsa", *QUICK, "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["stopped_by_time_budget"] is True and metrics["iterations"] == 1
    assert metrics["time_budget"] == pytest.approx(1e-6)
    meta = SyntheticSet.load(tmp_path / "synthetic.npz", num_classes=10, image_shape=(1, 8, 8)).meta
    assert meta["iterations"] == 1


def test_dp_with_a_time_budget_reports_the_epsilon_of_the_iterations_run(tmp_path) -> None:
    argv = ["distill", "--ipc", "1", "--batch-real", "16", "--no-dsa", "--dp-epsilon", "2", *QUICK]
    assert main([*argv, "--iterations", "40", "--time-budget", "0.000001", "--out", str(tmp_path / "cut")]) == 0
    assert main([*argv, "--iterations", "40", "--out", str(tmp_path / "full")]) == 0
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert cut["iterations"] == 1 and full["iterations"] == 40
    assert cut["epsilon"] < full["epsilon"] <= 2.0 + 1e-9


def test_idm_queue_from_the_cli_and_refused_under_dp(tmp_path, capsys) -> None:
    argv = ["distill", "--ipc", "1", "--iterations", "2", "--batch-real", "16", "--queue-size", "2", *QUICK]
    assert main([*argv, "--out", str(tmp_path / "idm")]) == 0
    assert main([*argv, "--dp-epsilon", "1", "--out", str(tmp_path / "dp")]) == 2
    assert "cannot be combined with real_statistics (DP" in capsys.readouterr().err
    assert main([*argv, "--method", "gm", "--out", str(tmp_path / "gm")]) == 2
    assert "--method gm cannot honour --queue-size" in capsys.readouterr().err


def test_a_run_stopped_by_its_budget_resumes_from_where_it_stopped(tmp_path) -> None:
    argv = ["distill", "--ipc", "1", "--iterations", "4", "--batch-real", "16", "--no-dsa", "--checkpoint-every", "1",
            *QUICK, "--out", str(tmp_path)]
    assert main([*argv, "--time-budget", "0.000001"]) == 0
    first = json.loads((tmp_path / "metrics.json").read_text())
    assert first["iterations"] == 1 and first["stopped_by_time_budget"]
    assert main([*argv, "--resume"]) == 0
    second = json.loads((tmp_path / "metrics.json").read_text())
    assert second["resumed_from_iteration"] == 1 and second["iterations"] == 4
    assert not second["stopped_by_time_budget"] and len(second["loss_history"]) == 4
