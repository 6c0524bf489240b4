"""``fedcond audit`` and ``fedcond distill --dp-epsilon`` end to end on digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedcond.cli.main import main
from fedcond.distill.synthetic import SyntheticSet
from fedcond.privacy.membership import auc_lower_bound

FAST_AUDIT = ["--target-epochs", "5", "--shadow-models", "1", "--reference-size", "200", "--set", "model=mlp"]


@pytest.fixture(scope="module")
def copied_set(tmp_path_factory) -> Path:
    """Real init with zero iterations: the synthetic set *is* 20 training images."""
    out = tmp_path_factory.mktemp("distill")
    assert (
        main(["distill", "--ipc", "2", "--iterations", "0", "--eval-runs", "0", "--out", str(out), "--device", "cpu"])
        == 0
    )
    return out / "synthetic.npz"


def test_audit_of_copied_training_images_reports_leakage(copied_set: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "audit"
    assert main(["audit", "--synthetic", str(copied_set), "--out", str(out), "--device", "cpu", *FAST_AUDIT]) == 0
    printed = capsys.readouterr().err
    # every stage leaves a line (a log of a long audit is not empty until the verdict)
    for stage in ("audit: nearest neighbours", "audit: membership inference", "audit: reference"):
        assert stage in printed
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("nn_match_rate", "nn_distance_ratio", "mia_auc", "mia_tpr_at_1pct_fpr", "verdict"):
        assert key in metrics
    assert metrics["nn_match_rate"] == 1.0
    assert metrics["nn_distance_ratio"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["verdict"] == "leaks"
    assert 0.0 <= metrics["mia_auc"] <= 1.0
    # the AUC bounds in metrics.json are the ones the verdict tested, at its corrected level
    tests = 2 * 2 + 2  # pixel + feature space (two tests each), loss + LiRA attacks
    assert metrics["verdict_test_level"] == pytest.approx(metrics["significance"] / tests)
    for attack in ("loss", "lira"):
        expected = auc_lower_bound(
            metrics[f"mia_{attack}_auc"], members=metrics["num_members"], nonmembers=metrics["num_nonmembers"],
            z=metrics["verdict_z"],
        )
        assert metrics[f"mia_{attack}_auc_lower"] == pytest.approx(expected)
    assert metrics["pixel_nn_match_pvalue"] < metrics["verdict_test_level"]
    assert (out / "nearest_neighbours.png").stat().st_size > 0
    assert (out / "roc.png").stat().st_size > 0


def test_reference_cache_is_written_once_then_reused_and_guarded(copied_set: Path, tmp_path: Path, capsys) -> None:
    cache = tmp_path / "reference.json"
    first, second = tmp_path / "first", tmp_path / "second"
    base = ["audit", "--device", "cpu", "--reference-cache", str(cache), *FAST_AUDIT]
    assert main([*base, "--synthetic", str(copied_set), "--out", str(first)]) == 0
    assert cache.exists()
    real = SyntheticSet.load(copied_set)
    noise = SyntheticSet(torch.randn_like(real.images), real.labels, dict(real.meta))
    noise_path = noise.save(tmp_path / "noise.npz")
    capsys.readouterr()
    assert main([*base, "--synthetic", str(noise_path), "--out", str(second)]) == 0
    printed = capsys.readouterr().err
    assert "reference read from" in printed and "audit: reference:" not in printed  # nothing retrained
    one = json.loads((first / "metrics.json").read_text())
    two = json.loads((second / "metrics.json").read_text())
    assert one["reference_source"] == "computed" and two["reference_source"].startswith("read from")
    for key in ("reference_mia_auc", "reference_mia_tpr_at_1pct_fpr", "reference_accuracy"):
        assert two[key] == one[key]
    assert one["verdict"] == "leaks" and two["verdict"] != "leaks"  # the target side is this set's own
    # other settings: refused with the differing field named, and the file is left as it was
    stored = cache.read_bytes()
    argv = [*base, "--synthetic", str(noise_path), "--out", str(tmp_path / "third"), "--reference-size", "150"]
    assert main(argv) == 2
    assert "reference_size: 200 -> 150" in capsys.readouterr().err
    assert cache.read_bytes() == stored
    # a truncated file: one clear line, not a traceback
    cache.write_bytes(stored[: len(stored) // 2])
    assert main([*base, "--synthetic", str(noise_path), "--out", str(tmp_path / "fourth")]) == 2
    assert "unreadable or corrupted" in capsys.readouterr().err


def test_audit_of_pure_noise_finds_no_memorisation(copied_set: Path, tmp_path: Path) -> None:
    real = SyntheticSet.load(copied_set)
    noise = SyntheticSet(torch.randn_like(real.images), real.labels, dict(real.meta))
    path = noise.save(tmp_path / "noise.npz")
    out = tmp_path / "audit"
    assert main(["audit", "--synthetic", str(path), "--out", str(out), "--device", "cpu", *FAST_AUDIT]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nn_match_rate"] == 0.0
    # noise carries nothing of the training images: no test may fire (and "private" is never claimed)
    assert metrics["verdict"] == "no evidence of leakage at this attack strength"


def test_a_multi_formation_set_is_audited_as_its_decoded_tiles(tmp_path: Path) -> None:
    made = tmp_path / "f2"
    argv = ["distill", "--ipc", "1", "--factor", "2", "--iterations", "0", "--eval-runs", "0", "--out", str(made)]
    assert main(argv) == 0
    stored = SyntheticSet.load(made / "synthetic.npz")
    assert len(stored) == 10 and stored.factor == 2
    out = tmp_path / "audit"
    assert main(["audit", "--synthetic", str(made / "synthetic.npz"), "--out", str(out), *FAST_AUDIT]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["audited_images"] == 40
    assert metrics["synthetic_meta"]["factor"] == 2
    # each tile is a downsampled training image: closer to the training set than to held-out images
    assert metrics["pixel_nn_median_distance_train"] < metrics["pixel_nn_median_distance_held_out"]


def test_audit_refuses_a_set_with_another_normalisation(copied_set: Path, tmp_path: Path, capsys) -> None:
    real = SyntheticSet.load(copied_set)
    wrong = SyntheticSet(real.images, real.labels, {**real.meta, "mean": [0.5], "std": [0.5]})
    path = wrong.save(tmp_path / "wrong.npz")
    assert main(["audit", "--synthetic", str(path), "--out", str(tmp_path / "a"), *FAST_AUDIT]) == 2
    assert "normalisation mean" in capsys.readouterr().err


@pytest.mark.parametrize("recorded", [10**12, 100])
def test_audit_refuses_a_set_that_records_another_class_count(copied_set: Path, tmp_path: Path, capsys,
                                                              recorded: int) -> None:
    real = SyntheticSet.load(copied_set)
    path = SyntheticSet(real.images, real.labels, {**real.meta, "num_classes": recorded}).save(tmp_path / "n.npz")
    assert main(["audit", "--synthetic", str(path), "--out", str(tmp_path / "a"), *FAST_AUDIT]) == 2
    assert f"records num_classes {recorded}, digits has 10" in capsys.readouterr().err


def test_audit_refuses_a_set_of_another_shape(tmp_path: Path, capsys) -> None:
    bad = SyntheticSet(torch.zeros(10, 1, 28, 28), torch.arange(10), {"num_classes": 10})
    path = bad.save(tmp_path / "mnist_like.npz")
    assert main(["audit", "--synthetic", str(path), "--out", str(tmp_path / "a"), *FAST_AUDIT]) == 2
    assert "(1, 8, 8)" in capsys.readouterr().err


def test_audit_refuses_an_empty_set(tmp_path: Path, capsys) -> None:
    empty = SyntheticSet(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), {"num_classes": 10})
    path = empty.save(tmp_path / "empty.npz")
    assert main(["audit", "--synthetic", str(path), "--out", str(tmp_path / "a"), *FAST_AUDIT]) == 2
    assert "holds no images" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1"])
def test_audit_refuses_a_candidate_cap_below_one(copied_set: Path, tmp_path: Path, capsys, value: str) -> None:
    # -1 would slice [:-1]: 99 members against 179 non-members, reported as 99 each
    argv = ["audit", "--synthetic", str(copied_set), "--out", str(tmp_path / "a"), *FAST_AUDIT]
    assert main([*argv, "--set", f"max_candidates={value}"]) == 2
    assert "'max_candidates' must be >= 1" in capsys.readouterr().err


def test_a_bad_reference_cache_path_is_refused_before_the_audit(copied_set: Path, tmp_path: Path, capsys) -> None:
    # refused at once, not after the whole audit with no metrics.json written
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    out = tmp_path / "a"
    argv = ["audit", "--synthetic", str(copied_set), "--out", str(out), *FAST_AUDIT]
    assert main([*argv, "--reference-cache", str(blocker / "ref.json")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main([*argv, "--reference-cache", str(out / "metrics.json")]) == 2
    assert "would be overwritten by the audit's own metrics.json" in capsys.readouterr().err


def test_audit_needs_enough_held_out_images(copied_set: Path, tmp_path: Path, capsys) -> None:
    # quantile 0.001 needs 1000 calibration images; digits' test split has 360
    argv = ["audit", "--synthetic", str(copied_set), "--out", str(tmp_path / "a"), "--quantile", "0.001", *FAST_AUDIT]
    assert main(argv) == 2
    assert "at least 1000" in capsys.readouterr().err


@pytest.mark.parametrize("quantile", ["0", "1", "-0.5"])
def test_audit_rejects_a_quantile_outside_the_unit_interval(
    copied_set: Path, tmp_path: Path, capsys, quantile: str
) -> None:
    argv = [
        "audit", "--synthetic", str(copied_set), "--out", str(tmp_path / "a"), f"--quantile={quantile}", *FAST_AUDIT
    ]
    assert main(argv) == 2
    assert "'calibration_quantile' must lie in (0, 1)" in capsys.readouterr().err


def test_dp_distill_reports_epsilon_within_the_request(tmp_path: Path) -> None:
    out = tmp_path / "dp"
    argv = [
        "distill", "--ipc", "1", "--iterations", "3", "--batch-real", "32", "--eval-runs", "0", "--no-dsa",
        "--dp-epsilon", "2", "--dp-delta", "1e-5", "--out", str(out), "--device", "cpu",
    ]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["epsilon"] <= 2.0
    assert metrics["delta"] == 1e-5
    assert metrics["init"] == "noise"  # DP forces noise init
    meta = SyntheticSet.load(out / "synthetic.npz").meta
    assert meta["epsilon"] == metrics["epsilon"]
    assert meta["dp_noise"] == metrics["dp_noise"] == "secret"  # no --dp-noise-seed: OS-seeded noise


@pytest.mark.parametrize("init", ["real", "kmeans"])
def test_dp_distill_refuses_an_init_from_real_images_asked_for_by_name(tmp_path: Path, capsys, init: str) -> None:
    out = tmp_path / "dp"
    argv = ["distill", "--ipc", "1", "--iterations", "3", "--eval-runs", "0", "--init", init,
            "--dp-epsilon", "2", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--init {init} with --dp-epsilon" in err and "leave --init out" in err
    assert not (out / "synthetic.npz").exists()


@pytest.mark.parametrize(
    ("flags", "match"), [(["--dp-epsilon", "0"], "epsilon"), (["--dp-epsilon", "1", "--dp-delta", "1"], "delta")]
)
def test_dp_distill_rejects_a_bad_budget(tmp_path: Path, capsys, flags: list[str], match: str) -> None:
    argv = ["distill", "--ipc", "1", "--iterations", "2", "--eval-runs", "0", "--out", str(tmp_path / "x"), *flags]
    assert main(argv) == 2
    assert match in capsys.readouterr().err


def test_a_set_made_from_another_dataset_names_it_and_is_audited_against_it(tmp_path: Path, capsys) -> None:
    path = tmp_path / "mnist_set.npz"
    SyntheticSet(torch.randn(10, 1, 28, 28), torch.arange(10), {"num_classes": 10, "dataset": "mnist"}).save(path)
    # an explicit --dataset that disagrees: the error says which dataset to use, not a shape clash
    assert main(["audit", "--synthetic", str(path), "--dataset", "digits", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "made from 'mnist'" in err and "--dataset mnist" in err and "(1, 28, 28)" not in err
    # no --dataset: the set's own dataset is audited (here MNIST, which is not under this folder)
    missing = tmp_path / "no-data"
    assert main(["audit", "--synthetic", str(path), "--data-dir", str(missing), "--out", str(tmp_path / "b")]) == 2
    assert "MNIST" in capsys.readouterr().err
