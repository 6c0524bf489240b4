"""``metrics.json`` is strict JSON: NumPy/PyTorch scalars unwrapped, non-finite numbers as null."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from fedcond.metrics_file import json_safe, write_metrics


def _strict_load(path: Path) -> object:
    def refuse(token: str) -> float:
        raise ValueError(f"non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_non_finite_scalars_of_every_kind_become_null(tmp_path: Path) -> None:
    metrics = {
        "python": float("nan"),
        "numpy": np.float32("nan"),
        "tensor": torch.tensor(float("inf")),
        "nested": {"history": [1.5, np.float64("-inf"), torch.tensor(2.0)]},
        "count": np.int64(3),
        "path": tmp_path,
    }
    path = write_metrics(tmp_path / "run", metrics)
    assert path == tmp_path / "run" / "metrics.json"
    loaded = _strict_load(path)
    assert loaded == {
        "python": None, "numpy": None, "tensor": None, "nested": {"history": [1.5, None, 2.0]},
        "count": 3, "path": str(tmp_path),
    }
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_finite_values_pass_through_unchanged() -> None:
    assert json_safe({"a": 0.25, "b": [1, "x", None]}) == {"a": 0.25, "b": [1, "x", None]}
    assert math.isclose(json_safe(np.float32(0.5)), 0.5)


def test_arrays_and_tensors_become_lists_with_non_finite_values_as_null(tmp_path: Path) -> None:
    # .item() on a multi-element array raised after the whole run: the metrics were lost
    import numpy as np
    import torch

    metrics = {"a": np.array([1.0, np.nan]), "t": torch.tensor([[1, 2], [3, 4]]), "s": np.float32(2.5)}
    assert json_safe(metrics) == {"a": [1.0, None], "t": [[1, 2], [3, 4]], "s": 2.5}
    write_metrics(tmp_path, metrics)
    assert json.loads((tmp_path / "metrics.json").read_text())["t"] == [[1, 2], [3, 4]]
