"""``fedcond simulate``: a federated run on Flower's Simulation Engine (DESIGN.md section 3).

Settings come, in increasing priority, from ``--config FILE.toml`` (or the built-in demo when
no job flag is given at all), the dedicated flags, and ``--set key=value`` pairs. With no
argument the default demo runs: digits, 10 clients, Dirichlet(0.1), FedCond one-shot and
FedAvg side by side; ``metrics.json`` then holds the FedCond run at the top level and both runs
under ``runs``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedcond.cli.common import (
    RUN_OPTIONS,
    CommandError,
    add_common_arguments,
    add_config_arguments,
    command_line_keys,
    config_key,
    config_values,
    console,
    prepare_run_folder,
    print_table,
    refuse_files_of_bundled_data,
    refuse_ignored_keys,
    whole_number,
    write_metrics,
)
from fedcond.config import FederatedConfig, choices_of
from fedcond.federated.job import STRATEGIES

if TYPE_CHECKING:
    from fedcond.federated.job import FederatedJob

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
#: flags that steer the run and are no job keys (``device`` is one: a config file's device stands)
_RUN_OPTIONS = {
    **{key: flag for key, flag in RUN_OPTIONS.items() if key != "device"},
    "resume": "--resume",
    "engine": "--engine",
    "cpus_per_client": "--cpus-per-client",
    "max_concurrent_clients": "--max-concurrent-clients",
    "compare": "--compare",
    "client_policy": "--client-policy",
    "attack": "--attack",
    "attackers": "--attackers",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``simulate`` subcommand and its flags to ``subparsers``."""
    parser = subparsers.add_parser(
        "simulate",
        help="federated run on Flower's simulation engine (no argument: the demo)",
        description="Flags override the TOML config; --set key=value overrides both. "
        "With no job flag at all the demo runs (digits, 10 clients, Dirichlet 0.1, FedCond one-shot vs FedAvg).",
    )
    add_config_arguments(
        parser,
        config_help="TOML experiment file (see configs/)",
        set_help="any config key, e.g. server-epochs=200 or distill.init=noise (repeatable)",
    )
    parser.add_argument("--strategy", choices=STRATEGIES, default=None,
                        help="fedcond, Flower's FedAvg/FedProx, or its robust rules (default from config: fedcond)")
    parser.add_argument("--dataset", default=None, help="dataset name (default from config: digits)")
    parser.add_argument("--data-dir", type=Path, default=None, help="torchvision-layout dataset root")
    parser.add_argument("--num-clients", type=int, default=None, help="virtual SuperNodes / partitions")
    parser.add_argument("--partition", choices=choices_of(FederatedConfig, "partition"), default=None)
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
    parser.add_argument(
        "--client-policy",
        type=Path,
        default=None,
        metavar="FILE",
        help="client-policy TOML applied to every simulated client (default: the private policy: noise init "
        "only, release gate on every upload, no model updates; a FedAvg/FedProx run without a file serves "
        "them and is marked permissive; docs/client-policy.md)",
    )
    parser.add_argument(
        "--attack",
        default=None,
        metavar="KIND",
        help="simulated hostile or faulty clients: extreme-pixels, count-inflation, class-flood, label-flip, "
        "noise-images (FedCond), scaled-update (weight averaging) or drop-out (any); docs/robustness.md",
    )
    parser.add_argument("--attackers", type=int, default=None, help="how many clients attack (the first N; default 1)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the killed run in --out: after its last finished round, and a round's condensations from "
        "the clients' checkpoints (same settings; finished runs are kept)",
    )
    parser.add_argument(
        "--engine",
        choices=("ray", "inprocess"),
        default="ray",
        help="ray: Flower's Simulation Engine (default); inprocess: same apps, sequential, no Ray",
    )
    parser.add_argument(
        "--cpus-per-client", type=_ray_count, default=None, help="Ray CPUs per client (default 1; --engine ray only)"
    )
    parser.add_argument(
        "--max-concurrent-clients",
        type=_ray_count,
        default=None,
        help="clients running at once (default 2; --engine ray only: inprocess runs them one at a time)",
    )
    # None = "not given": a config file's seed/device then stand (flags override the file)
    add_common_arguments(parser, default_out="runs/simulate", from_config=("seed", "device"))
    parser.set_defaults(run=run_simulate)


#: the most CPUs a client, or clients at once, a Ray simulation is given from the command line
MAX_RAY_COUNT = 4096
#: Ray's defaults for ``--cpus-per-client`` and ``--max-concurrent-clients``
_RAY_DEFAULTS = {"cpus_per_client": 1, "max_concurrent_clients": 2}


_ray_count = whole_number(1, MAX_RAY_COUNT)  # an argparse type


def _ray_options(args: argparse.Namespace) -> dict[str, int]:
    """``cpus_per_client`` and ``max_concurrent_clients`` for the Ray engine (refused for ``inprocess``)."""
    given = [key for key in _RAY_DEFAULTS if getattr(args, key) is not None]
    if args.engine != "ray" and given:
        flags = " and ".join(_RUN_OPTIONS[key] for key in given)
        raise CommandError(f"{flags}: Ray settings; --engine {args.engine} runs the clients one at a time")
    return {
        key: default if getattr(args, key) is None else getattr(args, key)
        for key, default in _RAY_DEFAULTS.items()
    }


def _is_demo(args: argparse.Namespace) -> bool:
    return (
        args.config is None
        and args.overrides is None
        and args.compare is None
        and args.client_policy is None
        and args.attack is None
        and all(getattr(args, flag) is None for flag in _FLAG_KEYS)
    )


def _policy(args: argparse.Namespace):  # noqa: ANN202 - ClientPolicy | None, imported lazily
    """The ``--client-policy`` file's policy (its ledger checked writable); ``None`` when the run names none."""
    from fedcond.federated.policy import PolicyError, load_node_policy
    from fedcond.privacy.ledger import LedgerError

    if args.client_policy is None:
        return None
    try:
        return load_node_policy(args.client_policy)
    except (PolicyError, LedgerError) as exc:
        raise CommandError(f"--client-policy {args.client_policy}: {exc}") from exc


#: the folder of ``--out`` holding the uploads of a command's later FedCond runs (``--compare``)
COMPARED_RUNS = "runs"


def _check_same_runs(path: Path, keys: list[str]) -> None:
    """Refuse a ``--resume`` whose ``metrics.json`` holds other runs than this command's ``keys``."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CommandError(f"--resume: {path} is unreadable ({exc}); use another --out or --overwrite") from None
    if not isinstance(earlier, dict) or "strategy" not in earlier:
        raise CommandError(f"--resume: {path} was not written by fedcond simulate; use another --out or --overwrite")
    found = sorted(earlier["runs"]) if isinstance(earlier.get("runs"), dict) else [str(earlier["strategy"])]
    if found != sorted(keys):
        raise CommandError(
            f"--resume: {path.parent} holds the run(s) {found}, this command runs {keys}; "
            "use another --out, or --overwrite to replace them"
        )


def _refusals(metrics: dict[str, Any]) -> list[str]:
    """The distinct policy refusals of a run (each names its rule)."""
    reasons = {reason for h in metrics["history"] for reason in (h.get("refused") or {}).values()}
    return sorted(reasons)


def _mapping(args: argparse.Namespace) -> dict[str, Any]:
    from fedcond.federated.job import DEMO_JOB

    flags = {key: getattr(args, flag) for flag, key in _FLAG_KEYS.items()}
    flags = {key: str(value) if isinstance(value, Path) else value for key, value in flags.items()}
    # --seed re-seeds the clients' DM too; a missing distill.seed follows seed (job_from_mapping)
    flags.update({"seed": args.seed, "distill.seed": args.seed, "device": args.device})
    values = config_values(
        file=args.config, defaults=DEMO_JOB, flags=flags, overrides=args.overrides, run_options=_RUN_OPTIONS
    )
    values.setdefault("device", "auto")
    return values


def _check_job(args: argparse.Namespace, values: dict[str, Any]) -> FederatedJob:
    """The job of ``values``, checked before any run folder, Flower simulation or data is touched.

    Besides the job's own checks (:func:`~fedcond.federated.job.job_from_mapping`), the command
    line refuses what the job would silently drop: ``dp.epsilon`` <= 0 (Flower's run config
    spells "no DP" so), and ``--alpha``, ``--set shards_per_client=...``, ``--data-dir`` or
    ``--set download=true`` that the job's partition or dataset does not read.
    """
    raw = values.get("dp.epsilon")
    try:
        epsilon = None if raw is None or isinstance(raw, bool) else float(raw)
    except ValueError:
        epsilon = None  # not a number: parse_config names it
    if epsilon is not None and epsilon <= 0:
        raise CommandError(
            f"dp.epsilon must be > 0, got {raw}: a run without DP gives no dp.* key at all (drop dp.epsilon "
            "and the other dp.* keys); epsilon 0 means 'no DP' only in Flower's run config (pyproject.toml)"
        )
    from fedcond.federated.job import job_from_mapping

    job = job_from_mapping(values)
    flags = {key: getattr(args, flag) for flag, key in _FLAG_KEYS.items()}
    given = command_line_keys(flags, {key: "--" + flag.replace("_", "-") for flag, key in _FLAG_KEYS.items()},
                              args.overrides)
    strategies = [name for name, _ in _comparisons(args, _is_demo(args))]
    refuse_ignored_keys(job.federated.ignored_keys(given, strategies=strategies), given)
    if args.config is not None:  # a file may serve several commands: its unread keys are named, not refused
        from fedcond.config import load_toml

        in_file = [key for key in map(config_key, load_toml(args.config)) if key not in given]
        for key, reason in job.federated.ignored_keys(in_file, strategies=strategies).items():
            console.print(f"[yellow]note:[/] {args.config}: {key} has no effect ({reason})")
    asked = {"data_dir": job.data.data_dir is not None, "download": job.data.download}
    refuse_files_of_bundled_data(job.data.dataset, {key: given[key] for key in given if asked.get(key)})
    from fedcond.devices import resolve_device

    try:  # every simulated client and the server run on this machine: its devices are theirs
        resolve_device(job.device)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    return job


def _comparisons(args: argparse.Namespace, demo: bool) -> list[tuple[str, int]]:
    if demo:
        from fedcond.federated.job import DEMO_BASELINE_ROUNDS

        return [("fedavg", DEMO_BASELINE_ROUNDS)]
    out = []
    for item in args.compare or ():
        name, _, rounds = item.partition("=")
        if name not in STRATEGIES:
            raise CommandError(f"--compare: unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
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


def _attack(args: argparse.Namespace, jobs: list[tuple[str, Any]]):  # noqa: ANN202 - AttackConfig | None
    """The simulated attack, checked against every run's strategy; ``None`` without ``--attack``."""
    if args.attack is None:
        if args.attackers is not None:
            raise CommandError("--attackers needs --attack KIND")
        return None
    if args.attackers == 0:
        raise CommandError("--attackers 0: no client would attack; drop --attack and --attackers for an honest run")
    from fedcond.federated.attacks import AttackConfig, check_attack

    try:
        attack = AttackConfig(kind=args.attack, attackers=1 if args.attackers is None else args.attackers)
        for name, job in jobs:
            check_attack(attack, strategy=name, num_clients=job.federated.num_clients)
    except ValueError as exc:
        raise CommandError(f"--attack: {exc}") from None
    return attack


def run_simulate(args: argparse.Namespace) -> int:
    """Run ``fedcond simulate`` on Flower's simulation engine; write ``metrics.json`` and ``accuracy.png``."""
    if args.resume and args.overwrite:
        raise CommandError("--resume continues the run in --out and --overwrite replaces it: choose one")
    values = _mapping(args)
    job = _check_job(args, values)  # bad settings fail here, before the run folder and Flower's engine
    ray = _ray_options(args)
    from fedcond.federated.checkpoint import CHECKPOINTS, CLIENT_CHECKPOINTS, CheckpointMismatch, RunCheckpoint
    from fedcond.federated.uploads import UPLOADS

    started = [name for name in ("metrics.json", CLIENT_CHECKPOINTS) if (Path(args.out) / name).exists()]
    if args.resume and not started:
        raise CommandError(f"--resume: {args.out} holds no run to continue (no metrics.json, no {CLIENT_CHECKPOINTS}/)")
    out = prepare_run_folder(args.out, overwrite=args.overwrite, resume=args.resume)
    from fedcond.federated.job import job_from_mapping  # Flower is imported only when needed
    from fedcond.federated.policy import PolicyViolation, check_request, simulated_client_policy
    from fedcond.federated.server_app import run_identity, save_accuracy_curves
    from fedcond.federated.simulation import SimulationError, simulate

    demo = _is_demo(args)
    named_policy = _policy(args)

    def client_policy(strategy: str):  # noqa: ANN202 - the ClientPolicy of one run's simulated clients
        policy = simulated_client_policy(named_policy, strategy=strategy)
        if policy.checkpoints.folder is None:
            # the simulated clients' own disk is this machine's: a run killed during a
            # condensation continues it with --resume
            policy = dataclasses.replace(
                policy, checkpoints=dataclasses.replace(policy.checkpoints, folder=out / CLIENT_CHECKPOINTS)
            )
        return policy

    job = dataclasses.replace(job, out=out)
    jobs = [(job.federated.strategy, job)]
    for name, rounds in _comparisons(args, demo):
        # the first FedCond run keeps what its server received in OUT/uploads; a later one of the
        # same command in OUT/runs/KEY/uploads (KEY as in metrics.json), so none overwrites another
        later_fedcond = name == "fedcond" and any(strategy == "fedcond" for strategy, _ in jobs)
        run_out = out / COMPARED_RUNS / (name if name not in (strategy for strategy, _ in jobs) else f"{name}-{rounds}")
        compared = {**values, "strategy": name, "rounds": rounds, "out": str(run_out if later_fedcond else out)}
        if name != "fedcond" and job.federated.dp is not None:
            # dp.* is FedCond's DP-DM: a FedAvg/FedProx baseline runs without privacy, and says so
            compared = {k: v for k, v in compared.items() if not str(k).startswith("dp.")}
            console.print(f"[yellow]note:[/] {name} runs without DP (dp.* applies to FedCond's DP-DM only)")
        jobs.append((name, job_from_mapping(compared)))
    from fedcond.federated.client import check_partition

    for _, this_job in jobs:
        check_partition(this_job)  # an infeasible split: one line now, not one per client later
    attack = _attack(args, jobs)
    policies = {name: client_policy(name) for name, _ in jobs}
    for name, this_job in jobs:
        fed = this_job.federated
        if fed.strategy != "fedcond" or not fed.server_embedder or fed.rounds < 2:
            continue
        try:  # the clients' own rule (check_request), asked once here
            check_request(policies[name], action="condense", server_embedder=True,
                          dp_epsilon=None if fed.dp is None else fed.dp.epsilon)
        except PolicyViolation as exc:
            if exc.rule != "accept_server_embedder":
                continue  # refused by another rule: the run reports it as the clients refuse
            # every client would refuse every round after the first: say so now, not after round 1
            console.print(
                f"[red]fedcond simulate: error: server-embedder = true: {exc}; pass --client-policy with "
                "accept_server_embedder = true, or run with DP[/]"
            )
            return 2
    # every setting is checked by now: only a run that will start replaces the one in --out
    for folder in (CHECKPOINTS, CLIENT_CHECKPOINTS, UPLOADS, COMPARED_RUNS):
        if args.overwrite and (out / folder).is_dir():
            # the replaced run's checkpoints must not be resumed later, and its uploads are not
            # what this run's server received
            shutil.rmtree(out / folder)
    if demo:
        console.print("[bold]fedcond simulate[/] demo: digits, 10 clients, Dirichlet(0.1), FedCond one-shot vs FedAvg")
    runs: dict[str, dict[str, Any]] = {}

    def policy_info(strategy: str) -> dict[str, Any]:
        return {"file": str(args.client_policy) if args.client_policy else None, **policies[strategy].as_dict()}

    def combined(partial: dict[str, dict[str, Any]], *, complete: bool) -> dict[str, Any]:
        first_key = next(iter(partial))
        metrics = dict(partial[first_key])
        if len(jobs) > 1:
            reference = partial[first_key]["uplink_bytes"]
            metrics["runs"] = partial
            metrics["comparison"] = {
                k: {
                    "test_accuracy": v["test_accuracy"],
                    "uplink_bytes": v["uplink_bytes"],
                    "uplink_ratio_to_first": (v["uplink_bytes"] / reference) if reference else None,
                }
                for k, v in partial.items()
            }
        metrics["demo"] = demo
        metrics["client_policy"] = policy_info(jobs[0][0])  # the first run's; each run records its own
        metrics["complete"] = complete  # false while a run is unfinished: `--resume` continues it
        return metrics

    keys: list[str] = []
    for name, this_job in jobs:
        keys.append(name if name not in keys else f"{name}-{this_job.federated.rounds}")
    if args.resume and (out / "metrics.json").exists():
        _check_same_runs(out / "metrics.json", keys)
    for key, (name, this_job) in zip(keys, jobs, strict=True):
        fed = this_job.federated
        checkpoint = RunCheckpoint(out / CHECKPOINTS / key, identity=run_identity(this_job, attack))
        try:
            saved = checkpoint.load() if args.resume else None
        except CheckpointMismatch as exc:
            raise CommandError(f"--resume: {exc}") from None
        if saved is not None and saved.complete:
            runs[key] = saved.metrics  # finished before the kill: kept as written
            continue

        def write_partial(partial_report: Any, key: str = key, name: str = name) -> None:
            partial = {**partial_report.metrics(), "client_policy": policy_info(name)}
            write_metrics(out, combined({**runs, key: partial}, complete=False))

        with console.status(f"simulating {name}: {fed.num_clients} clients, {fed.rounds} round(s)"):
            try:
                report = simulate(
                    this_job,
                    engine=args.engine,
                    cpus_per_client=ray["cpus_per_client"],
                    max_concurrent_clients=ray["max_concurrent_clients"],
                    policy=policies[name],
                    attack=attack,
                    checkpoint=checkpoint,
                    on_round=write_partial,
                )
            except SimulationError as exc:  # the ServerApp failed: one line, not a traceback
                console.print(f"[red]fedcond simulate: error: {exc}[/]")
                return 1
        runs[key] = {**report.metrics(), "client_policy": policy_info(name)}
        # every finished run is on disk at once: a later run's crash cannot lose it
        write_metrics(out, combined(runs, complete=len(runs) == len(jobs)))
        logging.getLogger(__name__).info("%s: %s", key, report.test_accuracy)
    first_key = next(iter(runs))
    metrics = combined(runs, complete=True)
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
    console.print(f"wrote {out}/metrics.json, accuracy.png" + (", uploads/" if (out / "uploads").is_dir() else ""))
    permissive = [key for key, (name, _) in zip(keys, jobs, strict=True) if policies[name].permissive]
    if permissive:
        console.print(
            f"[yellow]note: the client policy of {', '.join(permissive)} is permissive (real-image starts, no "
            "release gate, a server-sent embedding network, or FedAvg/FedProx model updates): what the clients "
            "sent may hold or reveal their "
            "training images; metrics.json records client_policy.permissive[/]"
        )
    untrained = [k for k, v in runs.items() if not v["trained_rounds"]]
    refusals = [reason for k in untrained for reason in _refusals(runs[k])]
    if untrained and refusals:
        console.print(
            f"[red]fedcond simulate: error: every client refused the request by its policy; {refusals[0]}"
            + (f" (and {len(refusals) - 1} other reason(s) in metrics.json)" if len(refusals) > 1 else "")
            + "[/]"
        )
        return 1
    alarms = [h["robust_alarm"] for k in untrained for h in runs[k]["history"] if h.get("robust_alarm")]
    if untrained and alarms:
        console.print(
            f"[red]fedcond simulate: error: no round of {', '.join(untrained)} trained the global model: the "
            f"robust rule failed closed ({alarms[0]}); test_accuracy is null[/]"
        )
        return 1
    if untrained:
        console.print(
            f"[red]fedcond simulate: error: no round of {', '.join(untrained)} trained the global model "
            "(every client reply was dropped; see the log above); test_accuracy is null[/]"
        )
        return 1
    return 0
