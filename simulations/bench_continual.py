"""Benchmark: class-incremental replay at equal memory -- none, random, herding, distilled, joint.

For every benchmark, seed and memory size it runs Avalanche's Naive strategy with each replay
kind (plus the memory-free ``none`` and the ``joint`` upper bound once per seed) and the GDumb
protocol (a fresh network trained on the memory alone after each experience) for each memory
kind (``--augment-memory on|both`` adds rows that replay the memory images through DSA,
for every memory kind alike). Distilled memories are condensed once per (seed, memory) and shared by both protocols
(DM cache under ``OUT/dm-cache``). Results are mean +- std over seeds.

Writes ``OUT/bench_continual.json`` (after every run, so a partial run keeps its results),
``OUT/bench_continual.md`` (the table) and ``OUT/bench_continual.png`` (final accuracy vs memory
on the first benchmark).

Example (the budget measured in docs/continual.md)::

    python simulations/bench_continual.py --out results/continual --data-dir ../shared/data

``--data-dir`` is the torchvision root for MNIST and Fashion-MNIST and the CIFAR-10 root for
``split-cifar10`` (``cifar-10-batches-py/`` or the image folders ``train/`` and ``test/``), so
split-cifar10 runs in a call of its own::

    python simulations/bench_continual.py --out results/continual-cifar10 \
        --data-dir ../shared/data/cifar10-jpeg --benchmarks split-cifar10

A table too slow for one process is run as several (one per seed or per memory size, side by
side) and then merged into one JSON/table/figure::

    python simulations/bench_continual.py --merge results/a/bench_continual.json \
        results/b/bench_continual.json --out results/merged

The merge refuses runs of one table row that ran under different settings (those that matter for
that row: DM settings only for distilled rows, GDumb epochs only for GDumb rows, ...) and a
(row, seed) measured twice, naming them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import earlier_run, machine_facts, recorded_command  # noqa: E402 - simulations/ is a folder of scripts

from fedcond.config import AugmentConfig, ContinualConfig, DistillConfig
from fedcond.continual import (
    MEMORY_KINDS,
    REPLAY_KINDS,
    SplitBenchmark,
    available_benchmarks,
    make_split_benchmark,
    run_continual,
)
from fedcond.data import DatasetNotFoundError, ImageFolderError
from fedcond.devices import keep_freed_cpu_memory
from fedcond.distill.augment import LAYOUTS
from fedcond.distill.dm import INITS
from fedcond.distill.matching import MATCHINGS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/continual"))
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                        help="torchvision root (MNIST, Fashion-MNIST) or, for split-cifar10, the CIFAR-10 root")
    parser.add_argument("--benchmarks", nargs="+", choices=available_benchmarks(),
                        default=["split-mnist", "split-digits", "split-fashion-mnist"])
    parser.add_argument(
        "--memories", type=int, nargs="+", default=[10, 1, 20], help="images per class, first benchmark"
    )
    parser.add_argument(
        "--other-memories", type=int, nargs="+", default=[10], help="images per class, other benchmarks"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds, first benchmark")
    parser.add_argument("--other-seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds, other benchmarks")
    parser.add_argument("--kinds", nargs="*", default=["none", "random", "herding", "distilled", "joint"],
                        help="Naive rows (none or an empty list: GDumb rows only)")
    parser.add_argument("--gdumb-kinds", nargs="*", default=["random", "herding", "distilled"])
    parser.add_argument("--gdumb-memories", type=int, nargs="*", default=[10], help="memory sizes with GDumb rows")
    parser.add_argument("--epochs", type=int, default=2, help="Naive epochs per experience")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--gdumb-epochs", type=int, default=20)
    parser.add_argument("--augment-memory", choices=["off", "on", "both"], default="off",
                        help="DSA on replayed memory images (Naive replay rows, every memory kind)")
    parser.add_argument("--iterations", type=int, default=20, help="DM iterations per experience")
    parser.add_argument("--batch-real", type=int, default=32, help="DM real images per class and iteration")
    parser.add_argument("--dm-init", choices=INITS, default="real", help="DM initialisation")
    parser.add_argument("--dm-matching", choices=MATCHINGS, default="mean", help="DM matching (mean or mmd)")
    parser.add_argument("--dm-dsa-layout", choices=LAYOUTS, default=AugmentConfig().layout,
                        help="who shares a DSA parameter set inside DM (docs/distillation.md)")
    parser.add_argument("--dm-factor", type=int, default=1,
                        help="multi-formation factor of the distilled memory (factor^2 tiles per stored image)")
    parser.add_argument("--train-per-class", type=int, default=100, help="0 keeps the whole training split")
    parser.add_argument("--test-per-class", type=int, default=50, help="0 keeps the whole test split")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 on a shared CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs of OUT/bench_continual.json written by the same command and run the rest")
    parser.add_argument("--merge", nargs="+", metavar="JSON[:KIND,...]",
                        help="merge these bench_continual.json files into OUT instead of running anything; "
                             "a ':random,herding' suffix keeps only those replay kinds of that file")
    return parser.parse_args(argv)


def _config(
    args: argparse.Namespace, benchmark: str, kind: str, memory: int, seed: int, protocol: str
) -> ContinualConfig:
    gdumb = protocol == "gdumb"
    return ContinualConfig(
        benchmark=benchmark,
        replay=kind,
        memory_per_class=memory,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        gdumb=gdumb,
        gdumb_epochs=args.gdumb_epochs,
        augment_memory=protocol == "naive+aug",
        train_per_class=args.train_per_class or None,
        test_per_class=args.test_per_class or None,
        seed=seed,
        distill=DistillConfig(iterations=args.iterations, batch_real=args.batch_real, init=args.dm_init,
                              matching=args.dm_matching, augment=AugmentConfig(layout=args.dm_dsa_layout),
                              factor=args.dm_factor),
    )


def _stream(args: argparse.Namespace, benchmark: str, seed: int) -> SplitBenchmark:
    return make_split_benchmark(
        benchmark,
        seed=seed,
        data_dir=args.data_dir,
        train_per_class=args.train_per_class or None,
        test_per_class=args.test_per_class or None,
    )


def _jobs(args: argparse.Namespace) -> list[tuple[str, int, str, int, str]]:
    """``(benchmark, seed, kind, memory, protocol)`` in priority order: the first benchmark's first
    memory size for every seed comes first, so a run cut short still has the headline rows.

    Protocols: ``naive`` (replay), ``naive+aug`` (replay with DSA on the memory images) and
    ``gdumb``."""
    replay_protocols = {"off": ["naive"], "on": ["naive+aug"], "both": ["naive", "naive+aug"]}[args.augment_memory]
    jobs: list[tuple[str, int, str, int, str]] = []
    for benchmark in args.benchmarks:
        first = benchmark == args.benchmarks[0]
        memories = args.memories if first else args.other_memories
        for index, memory in enumerate(memories):
            for seed in args.seeds if first else args.other_seeds:
                if index == 0:
                    jobs += [(benchmark, seed, k, 0, "naive") for k in ("none", "joint") if k in args.kinds]
                for protocol in replay_protocols:
                    jobs += [(benchmark, seed, k, memory, protocol) for k in args.kinds if k not in ("none", "joint")]
                if memory in args.gdumb_memories:
                    jobs += [(benchmark, seed, k, memory, "gdumb") for k in args.gdumb_kinds]
    return jobs


def _job_key(run: dict[str, Any]) -> tuple[str, int, str, int, str]:
    """The :func:`_jobs` tuple a finished run's metrics answer (``--resume``)."""
    protocol = "gdumb" if run["gdumb"] else "naive+aug" if run["augment_memory"] else "naive"
    return run["benchmark"], run["seed"], run["replay"], run["memory_per_class"], protocol


def _summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[_row_key(run)].append(run)
    rows = []
    for (benchmark, protocol, replay, memory), members in groups.items():
        accs = [100 * m["final_average_accuracy"] for m in members]
        forgets = [100 * m["forgetting"] for m in members if m["forgetting"] is not None]
        rows.append(
            {
                "benchmark": benchmark,
                "protocol": protocol,
                "replay": replay,
                "memory_per_class": memory if replay not in ("none", "joint") else 0,
                "memory_images": members[0]["memory_images"],
                "seeds": len(members),
                "accuracy_mean": statistics.fmean(accs),
                "accuracy_std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
                "forgetting_mean": statistics.fmean(forgets) if forgets else None,
                "forgetting_std": (statistics.pstdev(forgets) if len(forgets) > 1 else 0.0) if forgets else None,
                "wall_seconds_mean": statistics.fmean(m["wall_seconds"] for m in members),
                "condense_seconds_mean": statistics.fmean(m["condense_seconds"] for m in members),
            }
        )
    return rows


# Which benchmark settings a run's result depends on, by what the run is. A random or herding
# memory never runs DM, so a random row measured before a DM option existed merges with distilled
# rows measured after it, while two distilled runs under different DM budgets never share a row.
DATA_SETTINGS = ("train_per_class", "test_per_class")
NAIVE_SETTINGS = ("epochs", "batch_size", "lr")
GDUMB_SETTINGS = ("gdumb_epochs",)
DM_SETTINGS = ("iterations", "batch_real", "dm_init", "dm_matching", "dm_dsa_layout", "dm_factor")
# Settings added after some results were recorded, with the value those older runs used.
SETTINGS_BEFORE_THEY_EXISTED = {"dm_dsa_layout": "sample", "dm_init": "real", "dm_matching": "mean", "dm_factor": 1}
PROTOCOLS = ("naive", "naive+aug", "gdumb")  # table order


class MergeError(ValueError):
    """Runs that cannot share one table: different settings for one row, or one seed twice."""


def _protocol(run: dict[str, Any]) -> str:
    return "gdumb" if run["gdumb"] else ("naive+aug" if run.get("augment_memory") else "naive")


def _row_key(run: dict[str, Any]) -> tuple[str, str, str, int]:
    return run["benchmark"], _protocol(run), run["replay"], run["memory_per_class"]


def relevant_settings(run: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The subset of a benchmark's ``settings`` that ``run``'s result depends on."""
    keys = list(DATA_SETTINGS)
    keys += GDUMB_SETTINGS if run["gdumb"] else NAIVE_SETTINGS
    if run["replay"] == "distilled":
        keys += DM_SETTINGS
    return {k: settings.get(k, SETTINGS_BEFORE_THEY_EXISTED.get(k)) for k in keys}


def parse_merge_source(source: str) -> tuple[Path, tuple[str, ...] | None]:
    """``PATH`` or ``PATH:KIND,KIND`` -> (path, kinds to keep or None for all)."""
    path, sep, tail = source.rpartition(":")
    if sep and tail and all(kind in REPLAY_KINDS for kind in tail.split(",")):
        return Path(path), tuple(tail.split(","))
    return Path(source), None


def merge_reports(
    reports: list[tuple[str, dict[str, Any]]], *, kinds: list[tuple[str, ...] | None] | None = None
) -> dict[str, Any]:
    """Merge ``(name, bench_continual.json content)`` pairs into one report.

    ``kinds[i]``, when given and not None, keeps only the runs of those replay kinds from the
    i-th report.

    A file whose runs came from several commands (``commands`` plus one ``settings``) is taken
    at its word: its ``settings`` describe all its runs. Merged runs carry their relevant
    settings and their source file, so a merged report can be merged again; its ``sources``
    (files and commands) carry over for the runs taken from it.

    Raises
    ------
    MergeError
        If a file has no ``runs`` or ``settings``, if two runs of the same row (benchmark,
        protocol, replay, memory per class) ran under different relevant settings, or if the
        same row and seed appear twice.
    """
    runs: list[dict[str, Any]] = []
    row_settings: dict[tuple, tuple[dict[str, Any], str]] = {}
    seen: dict[tuple, str] = {}
    sources = []
    for index, (name, report) in enumerate(reports):
        if "runs" not in report or ("settings" not in report and not all("settings" in r for r in report["runs"])):
            raise MergeError(f"{name}: not a bench_continual.json (no 'runs' or 'settings')")
        keep = kinds[index] if kinds is not None else None
        taken = [run for run in report["runs"] if keep is None or run["replay"] in keep]
        if "sources" in report:  # a merged report: keep the provenance of the runs taken from it
            for nested in report["sources"]:
                count = sum(1 for run in taken if run.get("source") == nested["file"])
                if count:
                    nested_kinds = nested.get("kinds", "all")
                    if keep is not None:  # the filter narrows what the nested source contributed
                        nested_kinds = list(keep) if nested_kinds == "all" else [k for k in nested_kinds if k in keep]
                    sources.append({**nested, "kinds": nested_kinds, "runs": count})
        else:
            commands = report.get("commands") or [report.get("command")]
            sources.append(
                {"file": name, "kinds": list(keep) if keep else "all", "commands": commands, "runs": len(taken)}
            )
        for run in taken:
            key = _row_key(run)
            settings = relevant_settings(run, run.get("settings", report.get("settings")))
            if key in row_settings and row_settings[key][0] != settings:
                first, first_name = row_settings[key]
                differing = sorted(k for k in settings if settings[k] != first[k])
                raise MergeError(
                    f"row {key} ran under different settings in {first_name} and {name}: "
                    + ", ".join(f"{k}={first[k]!r} vs {settings[k]!r}" for k in differing)
                )
            row_settings.setdefault(key, (settings, name))
            if (key, run["seed"]) in seen:
                raise MergeError(f"row {key} seed {run['seed']} appears in both {seen[(key, run['seed'])]} and {name}")
            seen[(key, run["seed"])] = name
            runs.append({**run, "source": run.get("source", name), "settings": settings})
    benchmarks = list(dict.fromkeys(run["benchmark"] for run in runs))
    summary = sorted(
        _summarise(runs),
        key=lambda r: (benchmarks.index(r["benchmark"]), PROTOCOLS.index(r["protocol"]), r["memory_per_class"],
                       REPLAY_KINDS.index(r["replay"])),
    )
    return {"sources": sources, "summary": summary, "runs": runs}


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| benchmark | protocol | replay | memory/class | memory images "
        "| final avg acc (%) | forgetting (pts) | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        forget = "n/a" if r["forgetting_mean"] is None else f"{r['forgetting_mean']:.1f} ± {r['forgetting_std']:.1f}"
        lines.append(
            f"| {r['benchmark']} | {r['protocol']} | {r['replay']} | {r['memory_per_class']} | {r['memory_images']} "
            f"| {r['accuracy_mean']:.1f} ± {r['accuracy_std']:.1f} | {forget} | {r['seeds']} |"
        )
    return "\n".join(lines) + "\n"


def _figure(rows: list[dict[str, Any]], benchmark: str, path: Path) -> None:
    """Final accuracy vs memory, one panel per protocol, one colour per memory kind, std bars.

    ``none`` and ``joint`` (no memory) are drawn as horizontal reference lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["benchmark"] == benchmark]
    protocols = [p for p in PROTOCOLS if any(r["protocol"] == p and r["replay"] in MEMORY_KINDS for r in rows)]
    if not protocols:
        return
    colours = {kind: f"C{i}" for i, kind in enumerate(MEMORY_KINDS)}
    fig, axes = plt.subplots(1, len(protocols), figsize=(4.6 * len(protocols), 4), sharey=True, squeeze=False)
    for ax, protocol in zip(axes[0], protocols, strict=True):
        memories: set[int] = set()
        for kind in MEMORY_KINDS:
            points = sorted(
                (r["memory_per_class"], r["accuracy_mean"], r["accuracy_std"])
                for r in rows
                if r["protocol"] == protocol and r["replay"] == kind
            )
            if points:
                memories.update(p[0] for p in points)
                ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                            marker="o", capsize=3, color=colours[kind], label=kind)
        for r in rows:
            if r["protocol"] == protocol and r["replay"] in ("none", "joint"):
                ax.axhline(r["accuracy_mean"], color="grey", ls="--" if r["replay"] == "joint" else ":", lw=1,
                           label=f"{r['replay']} ({r['accuracy_mean']:.1f})")
        ax.set_xticks(sorted(memories))
        ax.set_xlabel("memory (images per class)")
        ax.set_title(f"{benchmark}, {protocol}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("final average accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        return _merge_main(args.merge, args.out)
    torch.set_num_threads(args.threads)
    keep_freed_cpu_memory()  # CPU activations re-used instead of page-faulted (fedcond.devices)
    command = recorded_command(argv)
    started = time.perf_counter()
    jobs = _jobs(args)
    first_seeds: dict[str, int] = {}
    for benchmark, seed, *_ in jobs:
        first_seeds.setdefault(benchmark, seed)
    streams: dict[tuple[str, int], SplitBenchmark] = {}
    try:  # each benchmark's first stream is read before any run, so a wrong --data-dir stops at once
        for benchmark, seed in first_seeds.items():
            streams[(benchmark, seed)] = _stream(args, benchmark, seed)
    except (DatasetNotFoundError, ImageFolderError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    earlier = earlier_run(out / "bench_continual.json", command) if args.resume else None
    runs: list[dict[str, Any]] = list((earlier or {}).get("runs", []))
    finished = {_job_key(run) for run in runs}
    report: dict[str, Any] = {
        "command": command,
        **machine_facts(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    for benchmark, seed, kind, memory, protocol in jobs:
        if (benchmark, seed, kind, memory, protocol) in finished:
            print(f"{benchmark} seed={seed} {protocol} {kind} mem={memory}: kept from the earlier run (--resume)",
                  flush=True)
            continue
        if (benchmark, seed) not in streams:
            streams[(benchmark, seed)] = _stream(args, benchmark, seed)
        config = _config(args, benchmark, kind, max(memory, 1), seed, protocol)
        result = run_continual(
            config, benchmark=streams[(benchmark, seed)], device=args.device, cache_dir=out / "dm-cache"
        )
        metrics = result.to_metrics()
        metrics["memory_per_class"] = memory
        runs.append(metrics)
        print(
            f"[{time.perf_counter() - started:7.0f}s] {benchmark} seed={seed} "
            f"{protocol:9s} {kind:9s} mem={memory:2d}: "
            f"acc {100 * result.final_average_accuracy:5.1f}%  images {result.memory_images:4d}  "
            f"({result.wall_seconds:.0f}s, DM {result.condense_seconds:.0f}s)",
            flush=True,
        )
        summary = _summarise(runs)
        report.update(
            {
                "summary": summary,
                "runs": runs,
                "wall_seconds": time.perf_counter() - started,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
        (out / "bench_continual.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "bench_continual.md").write_text(_markdown(summary))
    _figure(report.get("summary", []), args.benchmarks[0], out / "bench_continual.png")
    print(_markdown(report.get("summary", [])))
    print(f"wall {report.get('wall_seconds', 0):.0f}s, peak RSS {report.get('peak_rss_mb', 0):.0f} MB -> {out}")
    return 0


def _merge_main(sources: list[str], out: Path) -> int:
    parsed = [parse_merge_source(source) for source in sources]
    missing = [str(path) for path, _ in parsed if not path.is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        report = merge_reports(
            [(str(path), json.loads(path.read_text())) for path, _ in parsed], kinds=[k for _, k in parsed]
        )
    except (MergeError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_continual.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "bench_continual.md").write_text(_markdown(report["summary"]))
    if report["summary"]:  # sorted: the first benchmark's rows come first
        _figure(report["summary"], report["summary"][0]["benchmark"], out / "bench_continual.png")
    print(_markdown(report["summary"]))
    print(f"merged {len(report['runs'])} runs from {len(parsed)} files -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
