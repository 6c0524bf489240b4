"""`fedcond distill` / `fedcond coreset` end to end on digits, per DESIGN.md section 3."""

from __future__ import annotations

import json

import pytest

from fedcond.cli import main
from fedcond.data import load_dataset
from fedcond.distill.synthetic import SyntheticSet

DISTILL_KEYS = {
    "dataset", "ipc", "iterations", "init", "distill_seconds", "iterations_per_second",
    "test_accuracy_mean", "test_accuracy_std", "eval_runs",
}


def test_distill_end_to_end(tmp_path) -> None:
    out = tmp_path / "run"
    code = main(["distill", "--ipc", "2", "--iterations", "5", "--eval-runs", "2", "--eval-epochs", "10",
                 "--init", "noise", "--out", str(out), "--device", "cpu"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert DISTILL_KEYS <= set(metrics)
    assert metrics["eval_runs"] == 2 and len(metrics["test_accuracies"]) == 2
    runs = metrics["test_accuracies"]
    assert metrics["test_accuracy_mean"] == pytest.approx(sum(runs) / 2)
    assert metrics["test_accuracy_std"] == pytest.approx(abs(runs[0] - runs[1]) / 2)
    assert metrics["test_accuracy_mean"] > 0.2  # twice chance after 5 DM steps from noise
    assert metrics["init"] == "noise" and metrics["iterations"] == 5
    assert (out / "synthetic.png").stat().st_size > 1000
    synthetic = SyntheticSet.load(out / "synthetic.npz", num_classes=10, image_shape=(1, 8, 8))
    assert len(synthetic) == 20


def test_eval_runs_zero_skips_evaluation(tmp_path) -> None:
    assert main(["distill", "--ipc", "1", "--iterations", "1", "--eval-runs", "0", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_accuracy_mean"] is None and metrics["eval_runs"] == 0


def test_eval_no_dsa_trains_the_evaluation_networks_without_augmentation(tmp_path) -> None:
    accuracies = {}
    for flag in ([], ["--eval-no-dsa"]):
        out = tmp_path / ("plain" if flag else "dsa")
        assert main(["coreset", "--method", "random", "--ipc", "2", "--eval-runs", "1", "--eval-epochs", "20",
                     "--out", str(out), *flag]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["eval_dsa"] is not bool(flag)
        accuracies[bool(flag)] = metrics["test_accuracies"]
    # same set, same network seed: only the augmentation differs, and it changes what is learnt
    assert accuracies[True] != accuracies[False]


def test_coreset_end_to_end(tmp_path) -> None:
    assert main(["coreset", "--method", "herding", "--ipc", "2", "--eval-runs", "1", "--eval-epochs", "40",
                 "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"test_accuracy_mean", "test_accuracy_std"} <= set(metrics)
    assert metrics["method"] == "herding"
    assert metrics["test_accuracy_mean"] > 0.7  # 2 real digits per class, 40 epochs: about 0.88
    coreset = SyntheticSet.load(tmp_path / "synthetic.npz", num_classes=10, image_shape=(1, 8, 8))
    assert coreset.class_counts().tolist() == [2] * 10
    # a coreset is made of real training images, each one present in the training split
    train = load_dataset("digits").train.images.flatten(1)
    assert all(bool((train == image.flatten()).all(1).any()) for image in coreset.images)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["distill", "--ipc", "0"], "config key 'distill.ipc' must be >= 1, got 0"),
        (["distill", "--dataset", "imagenet"], "unknown dataset"),
        (["distill", "--dataset", "mnist", "--data-dir", "/nonexistent"], "MNIST/raw"),
        (["distill", "--ipc", "500", "--iterations", "1"], "hold fewer than 500 images"),
        (["distill", "--ipc", "40", "--factor", "2", "--iterations", "1"], "needs ipc x factor^2"),
        (["distill", "--factor", "3", "--iterations", "1"], "--factor must be a positive integer dividing"),
        # checked before DM runs, so a typo does not wait for the whole condensation
        (["distill", "--iterations", "1", "--eval-model", "resnet"], "--eval-model: unknown model 'resnet'"),
        (["distill", "--iterations", "1", "--eval-epochs", "0"], "config key 'eval.epochs' must be >= 1, got 0"),
        (["distill", "--iterations", "1", "--checkpoint-every", "-1"], "'distill.checkpoint_every' must be >= 0"),
        (["distill", "--iterations", "2", "--lr-img", "nan", "--eval-runs", "0"], "'distill.lr_img': cannot read nan"),
        (["coreset", "--ipc", "500"], "hold fewer than 500 images; lower --ipc"),
        # DP flags alone would publish a non-private, real-init set
        (["distill", "--dp-delta", "1e-5", "--iterations", "1"], "--dp-delta without --dp-epsilon"),
        (["distill", "--dp-noise-seed", "3", "--dp-clip", "0.3"], "--dp-clip, --dp-noise-seed without --dp-epsilon"),
        # huge numbers: refused by key with the allowed range, never an overflow inside torch
        (["distill", "--ipc", "100000000000000000000", "--init", "noise"], "'distill.ipc' must lie in [1, 10000]"),
        (["distill", "--iterations", "100000000000000000000"], "'distill.iterations' must lie in [0, 1000000000]"),
        (["distill", "--lr-img", "1e308"], "'distill.lr_img' must lie in (0, 1000000], got 1e+308"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, argv, message) -> None:
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # a failed command leaves no empty run folder behind


@pytest.mark.parametrize("command", ["distill", "coreset", "continual", "audit", "simulate"])
def test_a_seed_out_of_range_is_refused_by_the_parser_naming_the_flag(tmp_path, capsys, command) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--seed", "18446744073709551616", "--out", str(tmp_path / "x")])
    assert exited.value.code == 2
    assert "argument --seed: must lie in [0, 4294967295], got 18446744073709551616" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_failed_command_keeps_a_folder_that_existed_before(tmp_path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["distill", "--dataset", "imagenet", "--out", str(tmp_path)]) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"
    nested = tmp_path / "new" / "run"
    assert main(["coreset", "--ipc", "500", "--out", str(nested)]) == 2
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", ["distill", "coreset", "continual", "audit"])
def test_out_naming_a_file_is_one_clear_line_and_the_file_survives(tmp_path, capsys, command) -> None:
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    argv = [command, "--out", str(existing)]
    if command == "audit":
        argv += ["--synthetic", str(tmp_path / "missing.npz")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "exists and is not a folder" in err and "Traceback" not in err
    assert existing.read_text() == "keep me"


@pytest.mark.parametrize("command", ["distill", "coreset", "simulate", "continual", "audit"])
def test_a_folder_holding_a_run_is_refused_and_kept(tmp_path, capsys, command) -> None:
    (tmp_path / "metrics.json").write_text('{"test_accuracy_mean": 0.97}')
    argv = [command, "--out", str(tmp_path)]
    if command == "audit":
        argv += ["--synthetic", str(tmp_path / "missing.npz")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds a run (metrics.json)" in err and "--overwrite" in err and "Traceback" not in err
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"test_accuracy_mean": 0.97}


def test_overwrite_replaces_the_run_in_the_folder(tmp_path) -> None:
    (tmp_path / "metrics.json").write_text('{"method": "earlier"}')
    argv = ["coreset", "--method", "random", "--ipc", "1", "--eval-runs", "0", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == "random"


def test_a_checkpoint_is_continued_or_replaced_never_silently_dropped(tmp_path, capsys) -> None:
    base = ["distill", "--ipc", "1", "--eval-runs", "0", "--checkpoint-every", "2", "--out", str(tmp_path)]
    assert main([*base, "--iterations", "2"]) == 0
    (tmp_path / "metrics.json").unlink()  # a run stopped after its checkpoint, before its metrics
    checkpoint = (tmp_path / "checkpoint.npz").read_bytes()
    assert main([*base, "--iterations", "4"]) == 2
    assert "already holds a run (checkpoint.npz)" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.npz").read_bytes() == checkpoint
    assert main([*base, "--iterations", "4", "--resume"]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["resumed_from_iteration"] == 2


def test_mnist_slice_cli(mnist_root, tmp_path) -> None:
    assert main(["distill", "--dataset", "mnist", "--data-dir", str(mnist_root), "--ipc", "1", "--iterations", "2",
                 "--eval-runs", "1", "--eval-epochs", "2", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["dataset"] == "mnist"


def test_kmeans_centroid_baseline_from_the_cli(tmp_path) -> None:
    out = tmp_path / "km"
    assert main(["distill", "--ipc", "2", "--iterations", "0", "--init", "kmeans", "--eval-runs", "1",
                 "--eval-epochs", "40", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["init"] == "kmeans" and metrics["iterations"] == 0
    assert metrics["test_accuracy_mean"] > 0.7  # two centroids per class, 40 epochs: about 0.88
    assert len(SyntheticSet.load(out / "synthetic.npz", num_classes=10, image_shape=(1, 8, 8))) == 20


def test_multi_formation_from_the_cli(tmp_path) -> None:
    out = tmp_path / "f2"
    assert main(["distill", "--ipc", "1", "--iterations", "3", "--factor", "2", "--eval-runs", "1",
                 "--eval-epochs", "5", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["factor"] == 2 and metrics["training_images"] == 40
    synthetic = SyntheticSet.load(out / "synthetic.npz", num_classes=10, image_shape=(1, 8, 8))
    assert len(synthetic) == 10 and synthetic.factor == 2 and len(synthetic.decoded()) == 40


def test_metrics_describe_the_new_set_even_when_its_evaluation_fails(tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    assert main(["distill", "--ipc", "1", "--iterations", "2", "--eval-runs", "0", "--out", str(out)]) == 0
    import fedcond.cli.distill as cli_distill

    def broken(*args, **kwargs):
        raise KeyboardInterrupt  # the user stops a long evaluation

    monkeypatch.setattr(cli_distill, "evaluate_synthetic", broken)
    assert main(["distill", "--ipc", "3", "--iterations", "2", "--eval-runs", "1", "--out", str(out),
                 "--overwrite"]) == 130
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ipc"] == 3 and metrics["evaluation"] == "pending" and metrics["test_accuracy_mean"] is None
    assert len(SyntheticSet.load(out / "synthetic.npz")) == 30


def test_a_resumed_run_reports_the_whole_runs_time_and_losses(tmp_path) -> None:
    out = tmp_path / "run"
    base = ["distill", "--ipc", "1", "--eval-runs", "0", "--checkpoint-every", "2", "--out", str(out)]
    assert main([*base, "--iterations", "4"]) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert main([*base, "--iterations", "8", "--resume"]) == 0
    second = json.loads((out / "metrics.json").read_text())
    assert second["resumed_from_iteration"] == 4 and first["resumed_from_iteration"] == 0
    assert len(second["loss_history"]) == 8 and second["loss_history"][:4] == first["loss_history"]
    assert second["distill_seconds"] > first["distill_seconds"] * 0.5


def test_resume_without_checkpoints_is_refused_and_the_run_is_kept(tmp_path, capsys) -> None:
    base = ["distill", "--ipc", "1", "--iterations", "2", "--eval-runs", "0", "--out", str(tmp_path)]
    assert main(base) == 0
    before = {name: (tmp_path / name).read_bytes() for name in ("metrics.json", "synthetic.npz")}
    assert main([*base, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume needs --checkpoint-every" in err and "Traceback" not in err
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_config_file_flags_and_set_build_the_run_config(tmp_path) -> None:
    config = tmp_path / "distill.toml"
    config.write_text("[distill]\nipc = 2\nlr_img = 0.5\nmomentum = 0.7\ninit = \"noise\"\n[eval]\nepochs = 7\n")
    out = tmp_path / "run"
    argv = ["distill", "--config", str(config), "--ipc", "3", "--set", "distill.momentum=0.8", "--set", "eval.lr=0.02",
            "--iterations", "1", "--eval-runs", "0", "--out", str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    used = metrics["config"]
    assert used["distill.lr_img"] == 0.5 and used["distill.init"] == "noise" and used["eval.epochs"] == 7  # file
    assert used["distill.ipc"] == 3 and metrics["ipc"] == 3  # the flag over the file
    assert used["distill.momentum"] == 0.8 and used["eval.lr"] == 0.02  # --set over the file
    assert used["distill.iterations"] == 1 and used["eval.runs"] == 0
    assert used["distill.batch_real"] == 256  # neither gave it: the config's default


def test_set_wins_over_the_flag(tmp_path) -> None:
    out = tmp_path / "run"
    argv = ["distill", "--method", "random", "--ipc", "2", "--set", "distill.ipc=1", "--eval-runs", "0"]
    assert main([*argv, "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["distill.ipc"] == 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["--set", "distill.ipcs=2"], "unknown config key(s) distill.ipcs"),
        (["--set", "ipc=2"], "unknown config key(s) ipc; valid keys: distill, eval"),
        (["--set", "eval.epochs=0"], "config key 'eval.epochs' must be >= 1, got 0"),
        (["--set", "distill.lr_img=-1"], "config key 'distill.lr_img' must be > 0, got -1.0"),
        (["--method", "random", "--set", "distill.lr_img=2"],
         "--method random cannot honour --iterations, distill.lr_img"),
    ],
)
def test_bad_config_keys_and_values_are_named_before_any_data_is_read(tmp_path, capsys, settings, message) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[distill]\nbatch_reel = 8\n")
    assert main(["distill", "--config", str(config), "--out", str(tmp_path / "x")]) == 2
    assert "unknown config key(s) distill.batch_reel" in capsys.readouterr().err
    assert main(["distill", *settings, "--iterations", "1", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_resume_refuses_a_folder_with_a_run_and_no_checkpoint(tmp_path, capsys) -> None:
    out = tmp_path / "finished"
    assert main(["distill", "--ipc", "1", "--iterations", "2", "--eval-runs", "0", "--out", str(out)]) == 0
    before = (out / "metrics.json").read_text()
    code = main(["distill", "--ipc", "1", "--iterations", "2", "--eval-runs", "0", "--checkpoint-every", "1",
                 "--resume", "--out", str(out)])
    assert code != 0 and "no checkpoint.npz to continue" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before


@pytest.mark.parametrize("method", ["gm", "random"])
def test_every_method_records_its_init(tmp_path, method) -> None:
    extra = ["--iterations", "2"] if method == "gm" else []
    out = tmp_path / method
    assert main(["distill", "--method", method, "--ipc", "1", *extra, "--eval-runs", "0", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["init"] == SyntheticSet.load(out / "synthetic.npz").meta.get("init")
    assert {"dataset", "ipc", "iterations", "init", "method"} <= set(metrics)


@pytest.mark.parametrize("command", ["distill", "simulate", "audit"])
def test_an_empty_out_is_refused_not_the_working_folder(tmp_path, capsys, monkeypatch, command) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([command, "--out", ""])
    assert exc.value.code == 2 and "--out: is empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["distill", "coreset", "simulate", "continual", "audit"])
def test_an_out_the_system_cannot_create_is_one_line_naming_the_flag(tmp_path, capsys, command) -> None:
    (tmp_path / "results.txt").write_text("keep me")
    out = tmp_path / "results.txt" / "run"
    argv = [command, "--out", str(out)]
    if command == "audit":
        argv += ["--synthetic", str(tmp_path / "missing.npz")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: cannot create the run folder (Not a directory)" in err and "Traceback" not in err
    assert (tmp_path / "results.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dp-epsilon", "0"], "--dp-epsilon must be > 0, got 0; a run without DP leaves --dp-epsilon out"),
        (["--dp-epsilon", "-2"], "--dp-epsilon must be > 0, got -2"),
        (["--dp-epsilon", "1", "--dp-delta", "2"], "config key 'dp.delta' must lie in (0, 1), got 2.0"),
        (["--dp-epsilon", "1", "--dp-clip", "0"], "config key 'dp.clip_norm' must be > 0, got 0.0"),
        (["--dp-epsilon", "1e308"], "config key 'dp.epsilon' must lie in (0, 100], got 1e+308"),
        (["--set", "dp.epsilon=1"], "'dp.epsilon' is not a config key but a command-line option: use the flag "
                                    "--dp-epsilon"),
    ],
)
def test_dp_settings_are_checked_before_any_data_is_read(tmp_path, capsys, monkeypatch, argv, message) -> None:
    import fedcond.cli.distill as distill_cli

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the DP settings were checked")

    monkeypatch.setattr(distill_cli, "load_data", no_data)
    assert main(["distill", *argv, "--iterations", "1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", ["distill", "coreset"])
@pytest.mark.parametrize(("flag", "message"), [(["--data-dir", "/data"], "--data-dir /data: dataset digits is bundled "
                                                 "with scikit-learn and reads no data folder"),
                                                (["--download"], "--download: dataset digits is bundled")])
def test_data_flags_for_the_bundled_digits_are_refused_not_ignored(tmp_path, capsys, command, flag, message) -> None:
    assert main([command, *flag, "--iterations" if command == "distill" else "--ipc", "1",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["--set", "resume=true"], "--set: 'resume' is not a config key but a command-line option: use the flag "
                                   "--resume"),
        (["--set", "out=runs/elsewhere"], "'out' is not a config key but a command-line option: use the flag --out"),
        (["--set", "=3"], "--set '=3' has no key before '='"),
        (["--set", "distill.augment=3"], "config key 'distill.augment' is a table of AugmentConfig settings, not a "
                                         "value (got '3')"),
    ],
)
def test_set_names_run_options_empty_keys_and_tables(tmp_path, capsys, settings, message) -> None:
    assert main(["distill", *settings, "--iterations", "1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and "given twice" not in err and "Traceback" not in err
