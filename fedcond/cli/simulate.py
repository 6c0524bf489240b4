"""``fedcond simulate``: a federated run on Flower's Simulation Engine (DESIGN.md section 3).

Settings come, in increasing priority, from ``--config FILE.toml`` (or the built-in demo when
no job flag is given at all), the dedicated flags, and ``--set key=value`` pairs. With no
argument the default demo runs: digits, 10 clients, Dirichlet(0.1), FedCond one-shot and
FedAvg side by side; ``metrics.json`` then holds the FedCond run at the top level and both runs
under ``runs``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from fedcond.cli.common import (
    CommandError,
    add_common_arguments,
    console,
    overrides_from,
    prepare_run_folder,
    print_table,
    write_metrics,
)
from fedcond.config import load_toml

__all__ = ["register", "run_simulate"]

# flag name -> job key
_FLAG_KEYS = {
    "strategy": "strategy",
    "dataset": "dataset",
    "data_dir": "data_dir",
    "num_clients": "num_clients",
    "partition": "partition",
    "alpha": "alpha",
    "rounds": "rounds",
    "ipc": "distill.ipc",
    "iterations": "distill.iterations",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``simulate`` subcommand and its flags to ``subparsers``."""
    parser = subparsers.add_parser(
        "simulate",
        help="federated run on Flower's simulation engine (no argument: the demo)",
        description="Flags override the TOML config; --set key=value overrides both. "
        "With no job flag at all the demo runs (digits, 10 clients, Dirichlet 0.1, FedCond one-shot vs FedAvg).",
    )
    parser.add_argument("--config", type=Path, default=None, help="TOML experiment file (see configs/)")
    parser.add_argument("--strategy", choices=("fedcond", "fedavg", "fedprox"), default=None)
    parser.add_argument("--dataset", default=None, help="dataset name (default from config: digits)")
    parser.add_argument("--data-dir", type=Path, default=None, help="torchvision-layout dataset root")
    parser.add_argument("--num-clients", type=int, default=None, help="virtual SuperNodes / partitions")
    parser.add_argument("--partition", choices=("iid", "dirichlet", "shards"), default=None)
    parser.add_argument("--alpha", type=float, default=None, help="Dirichlet concentration")
    parser.add_argument("--rounds", type=int, default=None, help="server rounds (fedcond: 1 = one-shot)")
    parser.add_argument("--ipc", type=int, default=None, help="synthetic images per class per client")
    parser.add_argument("--iterations", type=int, default=None, help="DM iterations per client")
    parser.add_argument(
        "--compare",
        nargs="*",
        default=None,
        metavar="STRATEGY=ROUNDS",
        help="also run these strategies on the same job, e.g. fedavg=20 fedprox=20",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                        help="any config key, e.g. server-epochs=200 or distill.init=noise (repeatable)")
    parser.add_argument(
        "--engine",
        choices=("ray", "inprocess"),
        default="ray",
        help="ray: Flower's Simulation Engine (default); inprocess: same apps, sequential, no Ray",
    )
    parser.add_argument("--cpus-per-client", type=int, default=1, help="Ray CPUs per client (default 1)")
    parser.add_argument("--max-concurrent-clients", type=int, default=2, help="clients running at once (default 2)")
    # None = "not given": a config file's seed/device then stand (flags override the file)
    add_common_arguments(parser, default_out="runs/simulate", from_config=("seed", "device"))
    parser.set_defaults(run=run_simulate)


def _is_demo(args: argparse.Namespace) -> bool:
    return args.config is None and args.overrides is None and args.compare is None and all(
        getattr(args, flag) is None for flag in _FLAG_KEYS
    )


def _mapping(args: argparse.Namespace) -> dict[str, Any]:
    from fedcond.federated.job import DEMO_JOB

    values: dict[str, Any] = dict(DEMO_JOB) if args.config is None else load_toml(args.config)
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            values[key] = str(value) if isinstance(value, Path) else value
    if args.seed is not None:
        values["seed"] = values["distill.seed"] = args.seed
    if args.device is not None:
        values["device"] = args.device
    values.setdefault("device", "auto")  # a missing distill.seed follows seed (job_from_mapping)
    values.update(overrides_from(args.overrides))
    return values


def _comparisons(args: argparse.Namespace, demo: bool) -> list[tuple[str, int]]:
    if demo:
        from fedcond.federated.job import DEMO_BASELINE_ROUNDS

        return [("fedavg", DEMO_BASELINE_ROUNDS)]
    out = []
    for item in args.compare or ():
        name, _, rounds = item.partition("=")
        if name not in ("fedcond", "fedavg", "fedprox"):
            raise CommandError(f"--compare: unknown strategy {name!r}")
        try:
            out.append((name, int(rounds) if rounds else 20))
        except ValueError:
            raise CommandError(f"--compare expects STRATEGY=ROUNDS, got {item!r}") from None
    return out


def _row(name: str, metrics: dict[str, Any], reference_uplink: int | None) -> dict[str, Any]:
    row = {
        "run": name,
        "strategy": metrics["strategy"],
        "rounds": metrics["rounds"],
        "test acc": "untrained" if metrics["test_accuracy"] is None else f"{100 * metrics['test_accuracy']:.2f}%",
        "uplink": f"{metrics['uplink_bytes'] / 2**20:.3f} MiB",
        "downlink": f"{metrics['downlink_bytes'] / 2**20:.3f} MiB",
        "wall": f"{metrics['wall_seconds']:.1f} s",
    }
    if reference_uplink:
        row["uplink vs first"] = f"{metrics['uplink_bytes'] / reference_uplink:.3g}x"
    if metrics.get("epsilon") is not None:  # DP-DM clients: the federation's spent epsilon
        row["epsilon"] = f"{metrics['epsilon']:.3g}"
    return row


def run_simulate(args: argparse.Namespace) -> int:
    """Run ``fedcond simulate`` on Flower's simulation engine; write ``metrics.json`` and ``accuracy.png``."""
    out = prepare_run_folder(args.out, overwrite=args.overwrite)
    from fedcond.federated.job import job_from_mapping  # Flower is imported only when needed
    from fedcond.federated.server_app import save_accuracy_curves
    from fedcond.federated.simulation import SimulationError, simulate

    demo = _is_demo(args)
    values = _mapping(args)
    for key in ("num_clients", "rounds", "distill.ipc"):
        if key in values and not isinstance(values[key], str) and int(values[key]) < 1:
            raise CommandError(f"--{key.split('.')[-1].replace('_', '-')} must be >= 1, got {values[key]}")
    job = job_from_mapping({**values, "out": str(out)})
    jobs = [(job.federated.strategy, job)]
    for name, rounds in _comparisons(args, demo):
        compared = {**values, "strategy": name, "rounds": rounds, "out": str(out)}
        if name != "fedcond" and job.federated.dp is not None:
            # dp.* is FedCond's DP-DM: a FedAvg/FedProx baseline runs without privacy, and says so
            compared = {k: v for k, v in compared.items() if not str(k).startswith("dp.")}
            console.print(f"[yellow]note:[/] {name} runs without DP (dp.* applies to FedCond's DP-DM only)")
        jobs.append((name, job_from_mapping(compared)))
    from fedcond.federated.client import check_partition

    for _, this_job in jobs:
        check_partition(this_job)  # an infeasible split: one line now, not one per client later
    if demo:
        console.print("[bold]fedcond simulate[/] demo: digits, 10 clients, Dirichlet(0.1), FedCond one-shot vs FedAvg")
    runs: dict[str, dict[str, Any]] = {}
    for name, this_job in jobs:
        key = name if name not in runs else f"{name}-{this_job.federated.rounds}"
        fed = this_job.federated
        with console.status(f"simulating {name}: {fed.num_clients} clients, {fed.rounds} round(s)"):
            try:
                report = simulate(
                    this_job,
                    engine=args.engine,
                    cpus_per_client=args.cpus_per_client,
                    max_concurrent_clients=args.max_concurrent_clients,
                )
            except SimulationError as exc:  # the ServerApp failed: one line, not a traceback
                console.print(f"[red]fedcond simulate: error: {exc}[/]")
                return 1
        runs[key] = report.metrics()
        logging.getLogger(__name__).info("%s: %s", key, report.test_accuracy)
    first_key = next(iter(runs))
    metrics = dict(runs[first_key])
    if len(runs) > 1:
        reference = runs[first_key]["uplink_bytes"]
        metrics["runs"] = runs
        metrics["comparison"] = {
            k: {
                "test_accuracy": v["test_accuracy"],
                "uplink_bytes": v["uplink_bytes"],
                "uplink_ratio_to_first": (v["uplink_bytes"] / reference) if reference else None,
            }
            for k, v in runs.items()
        }
    metrics["demo"] = demo
    write_metrics(out, metrics)
    save_accuracy_curves(
        {k: v["history"] for k, v in runs.items()},
        out / "accuracy.png",
        job=job,
        num_clients=job.federated.num_clients,
    )
    reference_uplink = runs[first_key]["uplink_bytes"] if len(runs) > 1 else None
    print_table(
        f"fedcond simulate: {job.data.dataset}, {job.federated.num_clients} clients, {job.federated.partition}"
        + (f"({job.federated.alpha})" if job.federated.partition == "dirichlet" else ""),
        [_row(k, v, reference_uplink) for k, v in runs.items()],
    )
    console.print(f"wrote {out}/metrics.json, accuracy.png")
    untrained = [k for k, v in runs.items() if not v["trained_rounds"]]
    if untrained:
        console.print(
            f"[red]fedcond simulate: error: no round of {', '.join(untrained)} trained the global model "
            "(every client reply was dropped; see the log above); test_accuracy is null[/]"
        )
        return 1
    return 0
