"""``write_metrics`` details: keys, tuples, unknown objects, folders, overwriting and the file's form."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from fedcond.metrics_file import json_safe, write_metrics


def test_keys_become_strings_at_every_level() -> None:
    assert json_safe({1: {2: "a"}, "x": 3}) == {"1": {"2": "a"}, "x": 3}


def test_tuples_become_lists_with_their_non_finite_values_as_null(tmp_path: Path) -> None:
    assert json_safe((1.0, math.nan, (math.inf, 2))) == [1.0, None, [None, 2]]
    write_metrics(tmp_path, {"pair": (math.nan, 1)})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"pair": [None, 1]}


def test_infinities_of_both_signs_become_null_and_finite_extremes_stay() -> None:
    assert json_safe([math.inf, -math.inf, np.float64("-inf"), 1e308, -0.0]) == [None, None, None, 1e308, -0.0]
    assert json_safe(np.bool_(True)) is True and json_safe(np.int32(-4)) == -4


def test_objects_json_does_not_know_are_written_as_their_text(tmp_path: Path) -> None:
    write_metrics(tmp_path, {"device": torch.device("cpu"), "dtype": torch.float32})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"device": "cpu", "dtype": "torch.float32"}


def test_nested_run_folders_are_created_and_a_second_write_replaces_the_first(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "run"
    first = write_metrics(out, {"accuracy": 0.5})
    second = write_metrics(out, {"accuracy": 0.75})
    assert first == second == out / "metrics.json"
    assert json.loads(second.read_text()) == {"accuracy": 0.75}
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_the_file_is_indented_json_ending_in_a_newline(tmp_path: Path) -> None:
    text = write_metrics(tmp_path, {"a": 1, "b": [1, 2]}).read_text()
    assert text.endswith("}\n") and text.count("\n") > 2
    assert text == json.dumps({"a": 1, "b": [1, 2]}, indent=2) + "\n"
