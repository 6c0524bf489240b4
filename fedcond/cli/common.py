"""Helpers shared by the sub-commands: common flags, run folders, metrics.json, tables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedcond.config import DataConfig, parse_config
from fedcond.data.registry import available_datasets
from fedcond.metrics_file import write_metrics

__all__ = [
    "CommandError",
    "add_common_arguments",
    "add_data_arguments",
    "console",
    "data_config_from",
    "overrides_from",
    "prepare_run_folder",
    "print_table",
    "write_metrics",
]


#: tables are the end of every command: when stderr is a file or pipe (CI logs, ``2> run.log``)
#: rich would wrap them at 80 columns, so they get 120 unless ``COLUMNS`` says otherwise
_PIPED_WIDTH = 120
console = Console(stderr=True)
if not console.is_terminal and not os.environ.get("COLUMNS"):
    console.width = _PIPED_WIDTH


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


def add_common_arguments(parser: argparse.ArgumentParser, *, default_out: str) -> None:
    """``--out``, ``--seed`` and ``--device``, present on every command."""
    parser.add_argument("--out", type=Path, default=Path(default_out), help=f"run folder (default {default_out})")
    parser.add_argument("--seed", type=int, default=0, help="seed for every random generator (default 0)")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto picks CUDA when present"
    )


def add_data_arguments(parser: argparse.ArgumentParser, *, default: str | None = "digits") -> None:
    """``--dataset``, ``--data-dir`` and ``--download``."""
    parser.add_argument(
        "--dataset",
        default=default,
        help=f"one of {', '.join(available_datasets())} (default {default}: bundled, no download)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="torchvision-layout dataset root")
    parser.add_argument(
        "--download", action="store_true", help="let torchvision download a missing dataset (off by default)"
    )


def data_config_from(args: argparse.Namespace) -> DataConfig:
    """The typed data config from the parsed flags."""
    if args.dataset not in available_datasets():
        raise CommandError(f"unknown dataset {args.dataset!r}; choose one of {', '.join(available_datasets())}")
    return parse_config(
        DataConfig, {"dataset": args.dataset, "data_dir": args.data_dir, "download": args.download}
    )


def prepare_run_folder(out: Path) -> Path:
    """Create the run folder and keep matplotlib, Flower and Ray state inside it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    state = out / ".state"
    os.environ.setdefault("MPLCONFIGDIR", str(state / "matplotlib"))
    os.environ.setdefault("FLWR_HOME", str((state / "flwr").resolve()))
    os.environ.setdefault("RAY_TMPDIR", str((state / "ray").resolve()))
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    return out


def print_table(title: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """A rich summary table of ``rows`` (dicts with the same keys) on stderr."""
    if not rows:
        return
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(str(key))
    for row in rows:
        table.add_row(*(_format(v) for v in row.values()))
    console.print(table)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def overrides_from(pairs: Sequence[str] | None) -> dict[str, str]:
    """Parse ``--set key=value`` pairs."""
    out: dict[str, str] = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise CommandError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out

