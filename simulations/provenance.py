"""Provenance of a benchmark result: the commit and the machine that produced it.

Every benchmark JSON records these facts beside its command, so a number can be reproduced
and compared only with numbers from the same kind of machine (CPUs differ: an AVX2-only AMD
EPYC runs DM without bf16, an Intel with AMX runs it several times faster).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["earlier_run", "machine_facts", "other_machine", "recorded_command"]

_ROOT = Path(__file__).resolve().parents[1]
#: the CPU flags that decide which kernels torch runs
_KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")


def _commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip() + ("-dirty" if dirty else "")


def _cpu() -> dict[str, Any]:
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu_model": model, "cpu_count": os.cpu_count(), "cpu_flags": [f for f in _KERNEL_FLAGS if f in flags]}


def recorded_command(argv: list[str] | None = None) -> str:
    """The command line that re-runs this benchmark, shell-quoted (``python SCRIPT ARGS``).

    ``argv`` is what ``main(argv)`` parsed (``None``: the process's own arguments), so a run
    started from Python records the options it really ran with; an empty value stays quoted
    (``--baselines ''``) and re-runs as is.
    """
    return shlex.join(["python", sys.argv[0], *(sys.argv[1:] if argv is None else argv)])


def same_command(recorded: str, command: str) -> bool:
    """Whether ``recorded`` and ``command`` are one run's command line, ``--resume`` aside."""

    def without_resume(line: str) -> list[str]:
        return [word for word in shlex.split(line) if word != "--resume"]

    return without_resume(recorded) == without_resume(command)


def earlier_run(path: Path, command: str) -> dict[str, Any] | None:
    """The JSON an earlier run of ``command`` left at ``path`` (``--resume``); ``None`` when absent.

    The commands are compared without ``--resume`` itself, and the machine facts the file records
    with this machine's: rows from another CPU kind would be mixed into one table.

    Raises
    ------
    SystemExit
        When ``path`` was written by another command, or on another machine: its rows would not
        belong to this run.
    """
    if not path.exists():
        return None
    earlier = json.loads(path.read_text())
    if not same_command(earlier.get("command", ""), command):
        raise SystemExit(f"--resume: {path} was written by another command ({earlier.get('command')!r}); "
                         "use another --out or the same command")
    if (other := other_machine(earlier)) is not None:
        raise SystemExit(f"--resume: {path} was written on another machine ({other}); its rows cannot be "
                         "compared with rows measured here: use another --out")
    return earlier


def other_machine(record: dict[str, Any]) -> str | None:
    """How the machine that wrote ``record`` differs from this one, or ``None`` when it does not.

    Only the facts ``record`` carries are compared (a record without machine facts is not refused).
    """
    here = _cpu()
    differences = [f"{key} {record[key]!r}, here {here[key]!r}" for key in ("cpu_model", "cpu_count", "cpu_flags")
                   if key in record and record[key] != here[key]]
    return "; ".join(differences) or None


def machine_facts() -> dict[str, Any]:
    """``commit``, CPU model/count/kernel flags, Python and torch versions, as JSON-ready values."""
    import torch

    return {
        "commit": _commit(),
        **_cpu(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
