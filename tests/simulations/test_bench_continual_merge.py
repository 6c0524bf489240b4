"""simulations/bench_continual.py --merge: one table from runs split over several processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.simulations.scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_continual")


SETTINGS = {
    "train_per_class": 0, "test_per_class": 0, "epochs": 2, "batch_size": 64, "lr": 0.01, "gdumb_epochs": 300,
    "iterations": 100, "batch_real": 64, "dm_init": "real", "dm_matching": "mean", "dm_dsa_layout": "class",
}


def _run(replay: str, seed: int, accuracy: float, *, gdumb: bool = False, memory: int = 10) -> dict:
    return {
        "benchmark": "split-mnist", "replay": replay, "gdumb": gdumb, "augment_memory": False, "seed": seed,
        "memory_per_class": memory, "memory_images": 10 * memory, "final_average_accuracy": accuracy,
        "forgetting": 0.1, "wall_seconds": 1.0, "condense_seconds": 0.0,
    }


def _report(runs: list[dict], **settings) -> dict:
    return {"command": "python simulations/bench_continual.py ...", "settings": {**SETTINGS, **settings}, "runs": runs}


def _row(summary: list[dict], replay: str, protocol: str = "naive") -> dict:
    (row,) = [r for r in summary if r["replay"] == replay and r["protocol"] == protocol]
    return row


def test_runs_of_one_row_from_several_files_are_averaged_together(bench):
    merged = bench.merge_reports([
        ("a", _report([_run("distilled", 0, 0.90), _run("random", 0, 0.80)])),
        ("b", _report([_run("distilled", 1, 0.94), _run("random", 1, 0.84), _run("random", 1, 0.95, gdumb=True)])),
    ])
    distilled = _row(merged["summary"], "distilled")
    assert distilled["seeds"] == 2
    assert distilled["accuracy_mean"] == pytest.approx(92.0)
    assert distilled["accuracy_std"] == pytest.approx(2.0)
    assert _row(merged["summary"], "random", "gdumb")["seeds"] == 1
    assert [run["source"] for run in merged["runs"]] == ["a", "a", "b", "b", "b"]
    assert [s["runs"] for s in merged["sources"]] == [2, 3]


def test_a_merged_report_merges_again_and_keeps_its_checks(bench):
    first = bench.merge_reports(
        [("a", _report([_run("distilled", 0, 0.90)])), ("b", _report([_run("distilled", 1, 0.94)]))]
    )
    again = bench.merge_reports([("ab", first), ("c", _report([_run("distilled", 2, 0.92)]))])
    assert _row(again["summary"], "distilled")["seeds"] == 3
    assert [run["source"] for run in again["runs"]] == ["a", "b", "c"]
    assert [(s["file"], s["commands"], s["runs"]) for s in again["sources"]] == [
        ("a", ["python simulations/bench_continual.py ..."], 1),
        ("b", ["python simulations/bench_continual.py ..."], 1),
        ("c", ["python simulations/bench_continual.py ..."], 1),
    ]
    only_b = bench.merge_reports([("ab", {**first, "runs": first["runs"][1:]})])
    assert [s["file"] for s in only_b["sources"]] == ["b"]
    mixed = bench.merge_reports([("a", _report([_run("distilled", 0, 0.90), _run("random", 0, 0.80)]))])
    random_only = bench.merge_reports([("merged", mixed)], kinds=[("random",)])
    assert [(s["file"], s["kinds"], s["runs"]) for s in random_only["sources"]] == [("a", ["random"], 1)]
    with pytest.raises(bench.MergeError, match="batch_real=64 vs 128"):
        bench.merge_reports([("ab", first), ("c", _report([_run("distilled", 2, 0.92)], batch_real=128))])


def test_a_dm_setting_only_separates_distilled_rows(bench):
    # Random replay never runs DM: its rows merge across DM budgets ...
    merged = bench.merge_reports([
        ("a", _report([_run("random", 0, 0.8)], iterations=100)),
        ("b", _report([_run("random", 1, 0.9)], iterations=1000)),
    ])
    assert _row(merged["summary"], "random")["seeds"] == 2
    # ... distilled rows do not.
    with pytest.raises(bench.MergeError, match=r"iterations=100 vs 1000"):
        bench.merge_reports([
            ("a", _report([_run("distilled", 0, 0.9)], iterations=100)),
            ("b", _report([_run("distilled", 1, 0.9)], iterations=1000)),
        ])


def test_gdumb_epochs_separate_gdumb_rows_but_not_naive_rows(bench):
    merged = bench.merge_reports([
        ("a", _report([_run("random", 0, 0.8)], gdumb_epochs=20)),
        ("b", _report([_run("random", 1, 0.9)], gdumb_epochs=300)),
    ])
    assert _row(merged["summary"], "random")["seeds"] == 2
    with pytest.raises(bench.MergeError, match="gdumb_epochs"):
        bench.merge_reports([
            ("a", _report([_run("random", 0, 0.8, gdumb=True)], gdumb_epochs=20)),
            ("b", _report([_run("random", 1, 0.9, gdumb=True)], gdumb_epochs=300)),
        ])


def test_a_file_from_before_the_layout_option_counts_as_the_sample_layout(bench):
    old = _report([_run("distilled", 0, 0.9)])
    del old["settings"]["dm_dsa_layout"]
    with pytest.raises(bench.MergeError, match="dm_dsa_layout='sample' vs 'class'"):
        bench.merge_reports([("old", old), ("new", _report([_run("distilled", 1, 0.9)]))])


def test_the_same_row_and_seed_twice_is_refused(bench):
    with pytest.raises(bench.MergeError, match="seed 0 appears in both a and b"):
        bench.merge_reports([("a", _report([_run("random", 0, 0.8)])), ("b", _report([_run("random", 0, 0.8)]))])


def test_a_kind_suffix_keeps_only_those_runs_of_that_file(bench):
    assert bench.parse_merge_source("x/y.json:random,herding") == (Path("x/y.json"), ("random", "herding"))
    assert bench.parse_merge_source("x:y/z.json") == (Path("x:y/z.json"), None)
    old = _report([_run("random", 0, 0.8), _run("distilled", 0, 0.9)], dm_dsa_layout="sample")
    merged = bench.merge_reports([("old", old), ("new", _report([_run("distilled", 0, 0.95)]))],
                                 kinds=[("random",), None])
    assert _row(merged["summary"], "distilled")["accuracy_mean"] == pytest.approx(95.0)
    assert merged["sources"][0] == {"file": "old", "kinds": ["random"], "commands": [old["command"]], "runs": 1}


def test_merge_from_the_command_line_writes_json_table_and_figure(bench, tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report([_run("random", 0, 0.8), _run("distilled", 0, 0.9)])))
    b.write_text(json.dumps(_report([_run("random", 1, 0.9, memory=20), _run("distilled", 1, 0.92)])))
    out = tmp_path / "merged"
    assert bench.main(["--merge", str(a), str(b), "--out", str(out)]) == 0
    report = json.loads((out / "bench_continual.json").read_text())
    assert len(report["runs"]) == 4
    assert "| split-mnist | naive | distilled | 10 | 100 | 91.0 ± 1.0 |" in (out / "bench_continual.md").read_text()
    assert (out / "bench_continual.png").stat().st_size > 0
    # a file that is not a benchmark report: one clear line, exit 2, nothing written
    (tmp_path / "bad.json").write_text("{}")
    assert bench.main(["--merge", str(tmp_path / "bad.json"), "--out", str(tmp_path / "none")]) == 2
    assert "not a bench_continual.json" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
