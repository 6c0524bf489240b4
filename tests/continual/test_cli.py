"""``fedcond continual``: the DESIGN.md contract and one-line errors."""

from __future__ import annotations

import json

import pytest

from fedcond.cli.main import main


def test_continual_command_writes_the_contracted_metrics(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "continual", "--benchmark", "split-digits", "--replay", "distilled", "--memory-per-class", "1",
            "--epochs", "1", "--iterations", "2", "--batch-real", "16", "--train-per-class", "20",
            "--test-per-class", "10", "--out", str(out), "--seed", "3", "--device", "cpu",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("benchmark", "replay", "memory_images", "final_average_accuracy", "forgetting", "accuracy_matrix"):
        assert key in metrics
    assert metrics["benchmark"] == "split-digits" and metrics["replay"] == "distilled"
    assert metrics["memory_images"] == 10
    assert len(metrics["accuracy_matrix"]) == 5
    assert metrics["config"]["seed"] == 3
    assert (out / "accuracy_matrix.png").stat().st_size > 1000
    assert list((out / ".state" / "dm-cache").glob("*.npz"))  # DM state stays in the run folder


def test_a_rerun_that_reads_the_dm_cache_repeats_the_first_run(tmp_path) -> None:
    """The second run reads its condensations from the cache instead of running DM.

    It must give the same matrix: DM's seeded networks must not move the global RNG that orders
    Avalanche's batches (if they did, the last two experiences here would differ, e.g. 0.483 / 0.750
    against 0.450 / 0.767).
    """
    out = tmp_path / "run"
    argv = [
        "continual", "--benchmark", "split-digits", "--replay", "distilled", "--memory-per-class", "2",
        "--epochs", "2", "--iterations", "2", "--batch-real", "16", "--train-per-class", "60",
        "--test-per-class", "30", "--out", str(out), "--seed", "3", "--device", "cpu",
    ]
    assert main(argv) == 0
    first = json.loads((out / "metrics.json").read_text())["accuracy_matrix"]
    assert main(argv) == 2  # the folder holds a run: never replaced without --overwrite
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads((out / "metrics.json").read_text())["accuracy_matrix"] == first


def test_bad_memory_is_one_clear_error(tmp_path, capsys) -> None:
    code = main(["continual", "--memory-per-class", "0", "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err
    assert "must be >= 1 for replay" in err and "Traceback" not in err
    assert main(["continual", "--memory-per-class", "-1", "--out", str(tmp_path / "y")]) == 2
    assert "'memory_per_class' must be >= 0" in capsys.readouterr().err


def test_no_memory_needs_no_memory_size(tmp_path, capsys) -> None:
    # --replay none keeps no memory, so --memory-per-class 0 (as the docs' tables list it) is fine
    out = tmp_path / "none"
    argv = ["continual", "--benchmark", "split-digits", "--replay", "none", "--memory-per-class", "0",
            "--epochs", "1", "--train-per-class", "20", "--test-per-class", "10", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    assert json.loads((out / "metrics.json").read_text())["memory_images"] == 0
    assert "acc on experiences seen" in " ".join(capsys.readouterr().err.split())


def test_gdumb_without_memory_is_refused(tmp_path, capsys) -> None:
    code = main(["continual", "--replay", "none", "--gdumb", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "GDumb trains on the memory alone" in capsys.readouterr().err


def test_total_budget_below_class_count_is_refused(tmp_path, capsys) -> None:
    code = main(["continual", "--replay", "random", "--max-memory", "4", "--epochs", "1", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "smaller than the 10 classes" in capsys.readouterr().err


def test_augment_memory_flag_reaches_the_run(tmp_path, capsys) -> None:
    out = tmp_path / "aug"
    code = main(
        [
            "continual", "--benchmark", "split-digits", "--replay", "random", "--augment-memory",
            "--memory-per-class", "2", "--epochs", "1", "--train-per-class", "20", "--test-per-class", "10",
            "--out", str(out), "--device", "cpu",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["augment_memory"] is True and metrics["config"]["augment_memory"] is True
    assert metrics["memory_images"] == 20


def test_augment_memory_without_replay_is_refused(tmp_path, capsys) -> None:
    code = main(["continual", "--replay", "none", "--augment-memory", "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err
    assert "augment_memory" in err and "Traceback" not in err


def test_seed_comes_from_the_config_file_unless_the_flag_is_given(tmp_path) -> None:
    from fedcond.cli.continual import config_from
    from fedcond.cli.main import build_parser

    toml = tmp_path / "continual.toml"
    toml.write_text('[continual]\nseed = 5\nreplay = "random"\n')
    parser = build_parser()
    from_file = config_from(parser.parse_args(["continual", "--config", str(toml)]))
    assert from_file.seed == 5 and from_file.replay == "random"
    flag_wins = config_from(parser.parse_args(["continual", "--config", str(toml), "--seed", "2"]))
    assert flag_wins.seed == 2
    assert config_from(parser.parse_args(["continual"])).seed == 0


def test_config_keys_beside_the_continual_table_are_refused_not_dropped(tmp_path, capsys) -> None:
    config = tmp_path / "c.toml"
    config.write_text('seed = 7\n[continual]\nreplay = "random"\n')
    assert main(["continual", "--config", str(config), "--out", str(tmp_path / "x")]) == 2
    assert "keys outside the [continual] table would be ignored: seed" in capsys.readouterr().err
    assert main(["continual", "--set", "distill.seed=3", "--out", str(tmp_path / "y")]) == 2
    assert "distill.seed follows the run's seed" in capsys.readouterr().err


def test_metrics_config_reports_the_dm_seed_the_run_used(tmp_path) -> None:
    out = tmp_path / "run"
    argv = ["continual", "--benchmark", "split-digits", "--replay", "distilled", "--memory-per-class", "1",
            "--epochs", "1", "--iterations", "1", "--batch-real", "8", "--train-per-class", "10",
            "--test-per-class", "5", "--seed", "5", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["distill.seed"] == 5


def test_a_one_row_matrix_is_labelled_by_its_protocol(tmp_path, monkeypatch) -> None:
    # a one-experience GDumb run must not be labelled "joint" just because its matrix has one row
    import matplotlib.axes

    from fedcond.continual.figures import save_accuracy_matrix

    seen: list[list[str]] = []
    original = matplotlib.axes.Axes.set_yticks

    def spy(self, ticks, labels=None, **kwargs):
        seen.append(list(labels or []))
        return original(self, ticks, labels, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_yticks", spy)
    save_accuracy_matrix([[0.9]], tmp_path / "a.png")
    save_accuracy_matrix([[0.9]], tmp_path / "b.png", row_labels=["joint"])
    assert seen == [["after 0"], ["joint"]]
    with pytest.raises(ValueError, match="2 row labels for 1 rows"):
        save_accuracy_matrix([[0.9]], tmp_path / "c.png", row_labels=["a", "b"])


def test_split_cifar10_runs_on_the_jpeg_slice(cifar10_slice, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FEDCOND_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code = main(
        [
            "continual", "--benchmark", "split-cifar10", "--data-dir", str(cifar10_slice), "--replay", "distilled",
            "--memory-per-class", "1", "--epochs", "1", "--iterations", "1", "--batch-real", "4",
            "--out", str(out), "--device", "cpu",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["benchmark"] == "split-cifar10" and metrics["config"]["benchmark"] == "split-cifar10"
    assert metrics["memory_images"] == 10
    assert len(metrics["accuracy_matrix"]) == 5
    assert sorted(c for pair in metrics["experience_classes"] for c in pair) == list(range(10))


def test_split_cifar10_with_a_wrong_data_dir_is_one_line_naming_the_layouts(tmp_path, capsys) -> None:
    argv = ["continual", "--benchmark", "split-cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "x")]
    code = main(argv)
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "cifar-10-batches-py" in err and "train/<class>" in err and "airplane" in err
    assert not (tmp_path / "x").exists()  # no empty run folder left behind


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "distill.ipc=5"], "--set distill.ipc=5 has no effect: the memory budget sets the images per class"),
        (["--replay", "random", "--iterations", "5"], "--iterations 5 has no effect: it configures distilled replay's "
                                                      "condensation, and replay random condenses nothing"),
        (["--replay", "herding", "--set", "distill.augment.scale=2"], "--set distill.augment.scale=2 has no effect"),
        (["--gdumb-epochs", "3"], "--gdumb-epochs 3 has no effect: it sets GDumb's training"),
        (["--gdumb", "--lr", "0.1"], "--lr 0.1 has no effect: GDumb trains no network on the stream"),
        (["--replay", "none", "--memory-per-class", "5"], "--memory-per-class 5 has no effect: replay none keeps no "
                                                          "memory"),
        (["--max-memory", "20", "--memory-per-class", "5"], "--memory-per-class 5 has no effect: max_memory sets"),
        (["--data-dir", "/data"], "--data-dir /data: dataset digits is bundled with scikit-learn"),
        (["--set", "out=x"], "'out' is not a config key but a command-line option: use the flag --out"),
    ],
)
def test_a_setting_the_mode_does_not_read_is_refused_not_ignored(argv, message) -> None:
    from fedcond.cli.common import CommandError
    from fedcond.cli.continual import config_from
    from fedcond.cli.main import build_parser

    with pytest.raises(CommandError) as exc:
        config_from(build_parser().parse_args(["continual", *argv]))
    assert message in str(exc.value)


def test_settings_the_mode_reads_pass_and_a_file_may_hold_other_modes_keys(tmp_path) -> None:
    from fedcond.cli.continual import config_from
    from fedcond.cli.main import build_parser

    parser = build_parser()
    augmented = config_from(parser.parse_args(["continual", "--replay", "random", "--augment-memory",
                                               "--set", "distill.augment.scale=1.5"]))
    assert augmented.distill.augment.scale == 1.5  # augment_memory replays DM's transforms
    assert config_from(parser.parse_args(["continual", "--replay", "none", "--memory-per-class", "0"])).replay == "none"
    toml = tmp_path / "distilled.toml"
    toml.write_text('[continual]\nreplay = "distilled"\n[continual.distill]\niterations = 50\n')
    assert config_from(parser.parse_args(["continual", "--config", str(toml), "--replay", "random"])).replay == "random"


def test_a_refused_setting_fails_before_the_run_folder(tmp_path, capsys) -> None:
    assert main(["continual", "--gdumb-epochs", "3", "--out", str(tmp_path / "x")]) == 2
    assert "--gdumb-epochs 3 has no effect" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
