"""Benchmark: memory of a Ray simulation as the number of clients grows (JSON out).

Runs ``fedcond simulate`` (Flower's Simulation Engine, Ray backend) as a child process for
each client count and samples, once a second, the memory of the whole process tree: the
driver, Ray's daemons and every client actor. It reports the peak of the summed RSS (which
counts shared pages once per process, an upper bound) and of the summed PSS (shared pages
divided among the processes that map them: the honest total), next to the accuracy, uplink
bytes and wall time from the run's ``metrics.json``.

The budgets checked (DEVELOPERS.md): 10 clients <= 8 GiB, 100 clients <= 16 GiB. Ray runs at
most ``--max-concurrent-clients`` client actors at once, whatever the number of clients, so
memory should not grow with the client count; this benchmark measures that.

    python simulations/bench_scale.py --out results/scale --clients 10 100

Extra ``fedcond simulate`` flags go after ``--``, e.g. ``-- --iterations 50 --ipc 2``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError as exc:  # installed with flwr[simulation] (Ray needs it)
    raise SystemExit("bench_scale.py needs psutil (pip install psutil; Ray installs it)") from exc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import machine_facts  # noqa: E402 - simulations/ is a folder of scripts

GIB = 1024**3
BUDGETS_GIB = {10: 8.0, 100: 16.0}


def _tree_memory(root: psutil.Process) -> tuple[int, int, int]:
    """``(rss, pss, processes)`` summed over ``root`` and all its descendants."""
    rss = pss = count = 0
    try:
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, 0
    for proc in members:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        count += 1
    return rss, pss, count


def run_one(clients: int, *, out: Path, extra: list[str], interval: float) -> dict[str, Any]:
    """One ``fedcond simulate`` run with ``clients`` clients, its peak tree memory and metrics."""
    run_dir = out / f"clients-{clients}"
    command = [
        sys.executable, "-m", "fedcond", "simulate", "--num-clients", str(clients),
        "--out", str(run_dir), "--overwrite", "--strategy", "fedcond", *extra,
    ]
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(child.pid)
    peak_rss = peak_pss = peak_procs = 0
    while child.poll() is None:
        rss, pss, procs = _tree_memory(root)
        peak_rss, peak_pss, peak_procs = max(peak_rss, rss), max(peak_pss, pss), max(peak_procs, procs)
        time.sleep(interval)
    output = child.stdout.read() if child.stdout is not None else ""
    wall = time.perf_counter() - started
    (out / f"clients-{clients}.log").write_text(output)
    if child.returncode != 0:
        raise SystemExit(
            f"fedcond simulate with {clients} clients failed (exit {child.returncode}); "
            f"see {out}/clients-{clients}.log"
        )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    budget = BUDGETS_GIB.get(clients)
    return {
        "clients": clients,
        "command": " ".join(shlex.quote(c) for c in command),
        **machine_facts(),
        "test_accuracy": metrics.get("test_accuracy"),
        "uplink_bytes": metrics.get("uplink_bytes"),
        "wall_seconds": wall,
        "peak_tree_rss_gib": peak_rss / GIB,
        "peak_tree_pss_gib": peak_pss / GIB,
        "peak_processes": peak_procs,
        "budget_gib": budget,
        "within_budget": None if budget is None else peak_pss / GIB <= budget,
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/scale"))
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between memory samples")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for clients in args.clients:
        rows.append(run_one(clients, out=args.out, extra=extra, interval=args.interval))
        row = rows[-1]
        print(
            f"{clients:4d} clients: acc {100 * (row['test_accuracy'] or 0):.2f}%  "
            f"peak PSS {row['peak_tree_pss_gib']:.2f} GiB "
            f"(RSS sum {row['peak_tree_rss_gib']:.2f} GiB, {row['peak_processes']} processes)  "
            f"{row['wall_seconds']:.0f}s",
            flush=True,
        )
        (args.out / "bench_scale.json").write_text(
            json.dumps({"argv": argv, "extra": extra, "rows": rows}, indent=2) + "\n"
        )
    print("| clients | test accuracy | peak PSS (GiB) | peak RSS sum (GiB) | processes | budget (GiB) | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clients']} | {100 * (r['test_accuracy'] or 0):.2f}% | {r['peak_tree_pss_gib']:.2f} | "
            f"{r['peak_tree_rss_gib']:.2f} "
            f"| {r['peak_processes']} | {r['budget_gib'] or '-'} | {r['wall_seconds']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
