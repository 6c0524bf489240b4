"""Benchmark: accuracy under hostile clients, FedCond (robust rule on and off) vs weight averaging.

For each dataset, seed, attack kind and attacker count: FedCond one-shot with the robust rule on
(``robust.enabled=true``) and off (the default), FedAvg, and Flower's robust rules (FedMedian,
FedTrimmedAvg, Krum, Bulyan ... via ``--strategies``), all on the same Dirichlet partitions,
model and test set. The first N clients run the attack (``fedcond.federated.attacks``); an
attack that does not apply to a strategy's replies (label flips for weight averaging,
scaled updates for FedCond) is skipped for it. Recorded per run: test accuracy, whether the
final global parameters are finite, replies accepted / dropped / refused, wall time.

Targets (issue #24): with 3 of 10 attackers of any kind, robust FedCond loses at most 3 points
against its no-attack accuracy and its parameters stay finite; with no attackers it loses at
most 0.5 points against FedCond without the robust rule.

    python simulations/bench_robust.py --out docs/results/bench_robust_digits_attacks.json \\
        --datasets digits --seeds 0 --attackers 0 3 --strategies fedcond fedavg fedmedian fedtrimmedavg

The ``drop-out`` kind (the attackers send nothing) is the reference for the others: a defence
that refuses an attacker's reply can at best reach the accuracy of the federation without it.

The in-process engine runs every job (the same ServerApp/ClientApp code as Ray); results are
written after every run, so an interrupted benchmark keeps what it measured, and ``--resume``
(same command) keeps those runs and goes on with the rest.

``--condensation-cache DIR`` gives every simulated client of one dataset and seed the same
checkpoint folder (``DIR/DATASET-seedS``, the client policy's ``[checkpoints]``): a client's
condensation request is identical under every method, attack and attacker count of that seed
(honest clients, and attackers whose attack rides on an honest set), so it runs once and later
runs load its finished set, which is the set a fresh run makes (a finished checkpoint resumes
to the same images). Accuracies are unchanged; ``wall_seconds`` then counts only the work that
was not cached.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import earlier_run, machine_facts, recorded_command  # noqa: E402 - simulations/ is a folder of scripts

from fedcond.cli.common import overrides_from
from fedcond.devices import keep_freed_cpu_memory
from fedcond.federated.attacks import ATTACKS, AttackConfig, check_attack
from fedcond.federated.job import job_from_mapping
from fedcond.federated.policy import CheckpointPolicy, simulated_client_policy
from fedcond.federated.simulation import simulate

RECIPES: dict[str, dict[str, Any]] = {
    "digits": {
        "common": {"dataset": "digits"},
        "fedcond": {"distill.ipc": 10, "distill.iterations": 200, "server_epochs": 300},
    },
    "mnist": {
        "common": {"dataset": "mnist", "train_per_class": 1000},
        "fedcond": {"distill.ipc": 10, "distill.iterations": 200, "distill.batch_real": 128, "server_epochs": 100},
    },
}
SPEED = {"device": "cpu", "distill.mixed_precision": False, "distill.channels_last": False}
WEIGHT_STRATEGIES = ("fedavg", "fedprox", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _finite(arrays: Any) -> bool | None:
    if arrays is None:
        return None
    return all(bool(torch.isfinite(torch.as_tensor(v.numpy())).all()) for v in arrays.values())


def _methods(args: argparse.Namespace, recipe: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method name, strategy, job overrides)."""
    methods = []
    if "fedcond" in args.strategies:
        for variant in args.fedcond_variants:
            overrides = {**recipe["fedcond"], "rounds": 1, "robust.enabled": variant == "robust"}
            methods.append((f"fedcond-{variant}", "fedcond", overrides))
    weight_set = overrides_from(args.weight_set)
    suffix = "[" + ",".join(f"{k}={v}" for k, v in weight_set.items()) + "]" if weight_set else ""
    for name in args.strategies:
        if name in WEIGHT_STRATEGIES:
            methods.append((name + suffix, name, {"rounds": args.fedavg_rounds, "local_epochs": 1, **weight_set}))
    return methods


def _summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["method"], r["attack"], r["attackers"]), []).append(r)
    rows = []
    for (dataset, method, attack, attackers), runs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        accs = [r["test_accuracy"] if r["test_accuracy"] is not None else 0.0 for r in runs]
        rows.append(
            {
                "dataset": dataset,
                "method": method,
                "attack": attack,
                "attackers": attackers,
                "seeds": len(runs),
                "test_accuracy_mean": sum(accs) / len(accs),
                "finite": all(r["finite"] is not False for r in runs),
                "dropped": sum(r["dropped"] for r in runs),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--datasets", nargs="+", default=["digits"], choices=sorted(RECIPES))
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    parser.add_argument("--attackers", nargs="+", type=int, default=[0, 1, 3])
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument(
        "--strategies", nargs="+", default=["fedcond", "fedavg", "fedmedian", "fedtrimmedavg", "krum", "bulyan"]
    )
    parser.add_argument("--fedavg-rounds", type=int, default=20)
    parser.add_argument("--fedcond-variants", nargs="+", default=["robust", "plain"], choices=["robust", "plain"],
                        help="FedCond with the robust rule (robust) and without it (plain)")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE", help="FedCond job overrides")
    parser.add_argument("--weight-set", action="append", default=None, metavar="KEY=VALUE",
                        help="job overrides of the weight-averaging strategies, e.g. byzantine_nodes=3 (the method "
                             "name then shows them: krum[byzantine_nodes=3])")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --out and run the rest")
    parser.add_argument("--condensation-cache", type=Path, default=None, metavar="DIR",
                        help="share the clients' condensation checkpoints of one dataset and seed across runs "
                             "(DIR/DATASET-seedS): each distinct condensation runs once")
    args = parser.parse_args(argv)
    keep_freed_cpu_memory()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    extra = overrides_from(args.set)
    record: dict[str, Any] = {
        "command": recorded_command(argv),
        **machine_facts(),
        "torch_threads": torch.get_num_threads(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    earlier = earlier_run(args.out, record["command"]) if args.resume else None
    if earlier is not None:
        record["results"] = earlier["results"]
        print(f"--resume: {len(record['results'])} run(s) kept from {args.out}", flush=True)
    finished = {(r["dataset"], r["seed"], r["method"], r["attack"], r["attackers"]) for r in record["results"]}
    for dataset in args.datasets:
        recipe = RECIPES[dataset]
        base = {**recipe["common"], **SPEED, "partition": "dirichlet", "alpha": args.alpha,
                "num_clients": args.num_clients}
        if args.data_dir is not None:
            base["data_dir"] = str(args.data_dir)
        for seed in args.seeds:
            for method, strategy, overrides in _methods(args, recipe):
                conditions = [(None, 0)] if 0 in args.attackers else []
                conditions += [(k, n) for k in args.attacks for n in args.attackers if n > 0]
                for kind, attackers in conditions:
                    if (dataset, seed, method, kind, attackers) in finished:
                        continue
                    attack = None if kind is None else AttackConfig(kind=kind, attackers=attackers)
                    if attack is not None:
                        try:
                            check_attack(attack, strategy=strategy, num_clients=args.num_clients)
                        except ValueError:
                            continue  # this attack cannot ride on this strategy's replies
                    mapping = {**base, **overrides, "strategy": strategy, "seed": seed}
                    if strategy == "fedcond":
                        mapping.update(extra)
                    job = job_from_mapping(mapping)
                    policy = simulated_client_policy(None, strategy=strategy)
                    if args.condensation_cache is not None:
                        folder = args.condensation_cache / f"{dataset}-seed{seed}"
                        folder.mkdir(parents=True, exist_ok=True)
                        policy = dataclasses.replace(policy, checkpoints=CheckpointPolicy(folder=folder))
                    start = time.perf_counter()
                    report = simulate(job, engine="inprocess", attack=attack, policy=policy)
                    metrics = report.metrics()
                    row = {
                        "dataset": dataset,
                        "seed": seed,
                        "method": method,
                        "attack": kind,
                        "attackers": attackers,
                        "test_accuracy": report.test_accuracy,
                        "finite": _finite(report.final_arrays),
                        "accepted": metrics.get("accepted"),
                        "dropped": metrics.get("dropped"),
                        "refused": metrics.get("refused"),
                        "wall_seconds": time.perf_counter() - start,
                        "peak_rss_mib": _peak_rss_mib(),
                    }
                    record["results"].append(row)
                    record["summary"] = _summary(record["results"])
                    record["peak_rss_mib"] = _peak_rss_mib()
                    args.out.write_text(json.dumps(record, indent=1, default=str, allow_nan=True) + "\n")
                    acc = row["test_accuracy"]
                    print(
                        f"{dataset} seed {seed} {method:15s} {kind or 'none':15s} x{attackers}: "
                        f"{'n/a' if acc is None else f'{100 * acc:.2f}'} finite={row['finite']} "
                        f"dropped={row['dropped']} ({row['wall_seconds']:.0f}s)",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
