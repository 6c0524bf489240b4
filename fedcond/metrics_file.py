"""``metrics.json``: strict JSON from a run's metrics, written atomically.

Python's ``json`` writes ``NaN`` and ``Infinity`` tokens, which are not JSON (``jq``, browsers and
most other readers refuse the file). Every command and the Flower ServerApp write their metrics
through :func:`write_metrics`, which turns non-finite numbers into ``null`` after unwrapping
NumPy and PyTorch scalars.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["json_safe", "write_metrics"]


def json_safe(value: Any) -> Any:
    """``value`` with NumPy/PyTorch scalars unwrapped, arrays as lists, paths as strings and
    non-finite floats as ``None``."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist) and getattr(value, "ndim", 0) > 0:
        return json_safe(value.tolist())  # a NumPy array or tensor: its values, as lists
    if hasattr(value, "item") and callable(value.item):
        value = value.item()  # a 0-d array or tensor: check the Python number below
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(out: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write ``out/metrics.json`` atomically (``NaN``/``inf`` become ``null``); returns its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(json_safe(metrics), indent=2, allow_nan=False, default=str) + "\n")
    tmp.replace(path)
    return path
