"""simulations/bench_privacy.py: the CIFAR-10 rows (--cifar-dir) and their figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedcond.data.registry import CIFAR10_CLASSES
from fedcond.plots import figure_classes
from tests.simulations.scripts import documented_commands, load_script, unparsable_commands


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_privacy")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--datasets", "cifar10"], "--datasets cifar10 needs --cifar-dir"),
        (["--datasets", "digits", "svhn"], "--datasets: unknown ['svhn']"),
        (["--methods", "real-init", "realinit"], "--methods: unknown ['realinit']"),
    ],
)
def test_bad_options_are_refused_by_name(bench, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--out", str(tmp_path / "out"), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_each_dataset_is_read_from_its_own_folder(bench, tmp_path):
    args = bench.parse_args(["--datasets", "digits", "mnist", "cifar10", "--data-dir", "mnist-root",
                             "--cifar-dir", "cifar-root", "--out", str(tmp_path)])
    assert bench.data_config("digits", args) == "digits"
    mnist, cifar = bench.data_config("mnist", args), bench.data_config("cifar10", args)
    assert (mnist.dataset, mnist.data_dir) == ("mnist", Path("mnist-root"))
    assert (cifar.dataset, cifar.data_dir) == ("cifar10", Path("cifar-root"))


@pytest.mark.slow
def test_cifar10_rows_run_on_a_slice_and_name_the_classes(bench, cifar10_slice, tmp_path):
    out = tmp_path / "bench"
    assert bench.main(["--datasets", "cifar10", "--cifar-dir", str(cifar10_slice), "--out", str(out),
                       "--methods", "noise-init", "dp", "--epsilons", "10", "--ipc", "1", "--iterations", "2",
                       "--batch-real", "4", "--dp-batch-real", "4", "--no-bf16", "--eval-runs", "1",
                       "--eval-epochs", "1", "--audit-epochs", "1", "--shadow-models", "1",
                       "--reference-size", "20", "--max-candidates", "20", "--quantile", "0.1",
                       "--no-feature-space"]) == 0
    report = json.loads((out / "bench_privacy.json").read_text())
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"real-data model (20 images)", "noise-init", "dp eps=10"}
    assert all(r["dataset"] == "cifar10" for r in rows.values())
    assert rows["dp eps=10"]["epsilon"] <= 10.0
    assert report["settings"]["cifar_dir"] == str(cifar10_slice)
    for slug in ("noise-init", "dp_eps10"):
        pairs = figure_classes(out / f"cifar10_{slug}_nn.png")
        assert pairs and all(name in CIFAR10_CLASSES for row in pairs for name in row)
        assert (out / f"cifar10_{slug}_roc.png").exists()


#: a digits run of seconds: 2 DM iterations, one 1-epoch evaluation network, a 20-image reference
TINY_RUN = ["--ipc", "1", "--iterations", "2", "--batch-real", "4", "--no-bf16", "--eval-runs", "1",
            "--eval-epochs", "1", "--audit-epochs", "1", "--shadow-models", "1", "--reference-size", "20",
            "--max-candidates", "20", "--no-feature-space"]


def test_resume_keeps_the_finished_rows_and_runs_the_rest(bench, tmp_path, monkeypatch):
    from tests.killed import Killed, killed_at_call

    out = tmp_path / "bench"
    argv = ["--datasets", "digits", "--out", str(out), "--methods", "noise-init", "real-init", *TINY_RUN]
    condense, made = bench.condense, []
    monkeypatch.setattr(bench, "condense", killed_at_call(condense, 2))
    with pytest.raises(Killed):
        bench.main(argv)
    kept = json.loads((out / "bench_privacy.json").read_text())["rows"]
    assert [r["method"] for r in kept] == ["real-data model (20 images)", "noise-init"]
    monkeypatch.setattr(bench, "condense", lambda method, *a, **k: made.append(method) or condense(method, *a, **k))
    assert bench.main([*argv, "--resume"]) == 0
    rows = json.loads((out / "bench_privacy.json").read_text())["rows"]
    assert made == ["real-init"] and rows[:2] == kept
    assert [r["method"] for r in rows] == ["real-data model (20 images)", "noise-init", "real-init"]
    with pytest.raises(SystemExit, match="written by another command"):
        bench.main([*argv, "--seed", "1", "--resume"])


def test_resume_continues_a_row_from_its_last_finished_stage(bench, tmp_path, monkeypatch):
    from tests.killed import Killed, killed_at_call

    out = tmp_path / "bench"
    argv = ["--datasets", "digits", "--out", str(out), "--methods", "real-init", "noise-init", *TINY_RUN]
    audit, condense, evaluate = bench.run_audit, bench.condense, bench.evaluate_synthetic
    # killed in the second row's audit: its set and evaluation are kept, and so is the reference
    monkeypatch.setattr(bench, "run_audit", killed_at_call(audit, 2))
    with pytest.raises(Killed):
        bench.main(argv)
    first = json.loads((out / "bench_privacy.json").read_text())["rows"]
    assert [r["method"] for r in first] == ["real-data model (20 images)", "real-init"]
    kept_set = bench.SyntheticSet.load(out / "stages" / "digits_noise-init.npz")

    calls: list[str] = []
    monkeypatch.setattr(bench, "condense", lambda method, *a, **k: calls.append(method) or condense(method, *a, **k))
    monkeypatch.setattr(bench, "evaluate_synthetic", lambda *a, **k: calls.append("evaluate") or evaluate(*a, **k))

    def audit_with_reference(synthetic, splits, config, *, reference):
        calls.append("audit with the kept reference" if reference is not None else "audit")
        assert bool(torch.equal(synthetic.images, kept_set.images))
        return audit(synthetic, splits, config, reference=reference)

    monkeypatch.setattr(bench, "run_audit", audit_with_reference)
    assert bench.main([*argv, "--resume"]) == 0
    rows = json.loads((out / "bench_privacy.json").read_text())["rows"]
    assert calls == ["audit with the kept reference"]
    assert rows[:2] == first and rows[2]["method"] == "noise-init"
    assert rows[2]["stages_kept"] == ["digits_noise-init", "digits_noise-init_evaluation"]
    assert rows[0]["mia_auc"] == first[0]["mia_auc"]

    # stages written by another command are recomputed, not mixed in
    other = tmp_path / "other"
    (other / "stages").mkdir(parents=True)
    for path in (out / "stages").iterdir():
        (other / "stages" / path.name).write_bytes(path.read_bytes())
    calls.clear()
    monkeypatch.setattr(bench, "run_audit",
                        lambda *a, reference, **k: calls.append("audit" if reference is None else "kept") or audit(
                            *a, reference=reference, **k))
    assert bench.main(["--datasets", "digits", "--out", str(other), *argv[4:], "--seed", "1", "--resume"]) == 0
    assert calls == ["real-init", "evaluate", "audit", "noise-init", "evaluate", "kept"]


def test_a_row_lists_its_own_kept_stages_only(bench, tmp_path):
    stages = bench.Stages(tmp_path, "python bench_privacy.py", resume=True)
    stages.kept = ["digits_dp_eps10", "digits_dp_eps10_evaluation", "digits_reference"]
    assert stages.kept_for("digits_dp_eps1") == []
    assert stages.kept_for("digits_dp_eps10") == ["digits_dp_eps10", "digits_dp_eps10_evaluation"]


def test_a_stage_written_on_another_machine_is_recomputed(bench, tmp_path):
    stages = bench.Stages(tmp_path, "python bench_privacy.py", resume=True)
    stages.save("digits_reference", {"accuracy": 0.9})
    assert stages.load("digits_reference") == {"accuracy": 0.9}
    path = tmp_path / "digits_reference.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "cpu_model": "another CPU"}))
    assert stages.load("digits_reference") is None


def test_documented_commands_parse(bench):
    assert any("cifar10" in argv for _, argv in documented_commands("simulations/bench_privacy.py"))
    assert unparsable_commands("simulations/bench_privacy.py", bench.parse_args) == []
