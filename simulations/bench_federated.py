"""Benchmark: FedCond one-shot / multi-round vs Flower's FedAvg / FedProx (JSON + PNG out).

For each dataset and partition: FedCond one-shot (the private default: noise init, the default
client policy with its release gate), FedCond one-shot with real init under a permissive policy
(``fedcond-realinit``: the clients' training images as the start, no gate), FedCond
multi-round, FedAvg and FedProx
(20 rounds x 1 local epoch by default) on the same partitions, model and test set; test
accuracy (mean +- std over seeds), uplink/downlink bytes, the uplink ratio to FedAvg, wall
time and the process's peak RSS. FedCond rows also record the release gate's flags and its share
of the clients' time, and an independent nearest-neighbour check of what reached the server
(scikit-learn, pixel space in [0, 1]: an uploaded image closer to one of its client's training
images than any two distinct training images of that client are to each other). The target
checked: FedCond one-shot accuracy >= FedAvg's with <= 1/10 of its uplink bytes.

The runs use the in-process engine (:func:`fedcond.federated.simulation.simulate_in_process`):
the same ServerApp/ClientApp code and messages as the Ray and Deployment engines, so the byte
counts are identical, but without Ray's start-up and low-priority actors on a shared 2-core CPU.

    python simulations/bench_federated.py --out results/federated --datasets digits
    python simulations/bench_federated.py --out results/federated-mnist --datasets mnist \
        --data-dir ../shared/data --partitions dirichlet-0.1
    python simulations/bench_federated.py --out results/federated-cifar10 --datasets cifar10 \
        --cifar-dir ../shared/data/cifar10-jpeg --partitions dirichlet-0.1

CIFAR-10 is read from ``--cifar-dir`` (torchvision's ``cifar-10-batches-py/`` or its images in
the ImageFolder layout ``train/<class>/``, ``test/<class>/``); MNIST from ``--data-dir``.

Results are written after every run (``results.json``), so an interrupted benchmark keeps
what it measured. Every run also checkpoints as it goes: the server after each round
(``runs/RUN/checkpoints/``) and each client's condensation every 20 iterations (its policy's
``[checkpoints]`` folder, ``runs/RUN/client-checkpoints/``). ``--resume`` (same command) keeps
the finished runs of ``results.json`` and continues the interrupted one where it stopped, which
spreads a benchmark longer than one sitting over several; a continued row records
``"resumed": true`` (its ``wall_seconds`` cover the last part only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import earlier_run, machine_facts, recorded_command  # noqa: E402 - simulations/ is a folder of scripts

from fedcond.cli.common import overrides_from
from fedcond.devices import keep_freed_cpu_memory
from fedcond.federated.checkpoint import CHECKPOINTS, CLIENT_CHECKPOINTS, RunCheckpoint
from fedcond.federated.job import job_from_mapping
from fedcond.federated.policy import CheckpointPolicy, policy_from_mapping, simulated_client_policy
from fedcond.federated.server_app import run_identity
from fedcond.federated.simulation import simulate

#: the research setting of real-image starts: it uploads near-copies, so it needs a permissive policy
PERMISSIVE = policy_from_mapping({"allowed_init": ["real", "noise"], "gate.enabled": False})
#: multi-round FedCond as FedDM runs it: the global model is DM's embedder from round 2, which the
#: default policy refuses without DP (docs/client-policy.md), so these research runs accept it
PERMISSIVE_MULTI = policy_from_mapping({"allowed_init": ["real", "noise"], "gate.enabled": False,
                                        "accept_server_embedder": True})

# per-dataset recipes (CPU budgets: MNIST is subsampled, see docs/federated.md)
RECIPES: dict[str, dict[str, Any]] = {
    "digits": {
        "common": {"dataset": "digits"},
        "fedcond": {"distill.ipc": 10, "distill.iterations": 200, "server_epochs": 300},
        "multi": {"distill.ipc": 10, "distill.iterations": 100, "server_epochs": 300, "rounds": 3,
                  "server_embedder": True},
    },
    "mnist": {
        # 1000 training images per class (10k of MNIST's 60k) split over the clients, the full
        # 10k test set; bf16 DM on the clients where the CPU has bf16 kernels (AVX512-BF16 or
        # AMX; fedcond.devices falls back to fp32 elsewhere)
        "common": {"dataset": "mnist", "train_per_class": 1000},
        "fedcond": {
            "distill.ipc": 20,
            "distill.iterations": 200,
            "distill.batch_real": 128,
            "distill.mixed_precision": True,
            "server_epochs": 100,
        },
        "multi": {
            "distill.ipc": 10,
            "distill.iterations": 50,
            "distill.batch_real": 64,
            "server_epochs": 100,
            "rounds": 2,
            "server_embedder": True,
        },
    },
    "cifar10": {
        # every training image (5,000 per class) split over the clients, the full 10k test set
        "common": {"dataset": "cifar10", "train_per_class": None},
        "fedcond": {"distill.ipc": 10, "distill.iterations": 200, "distill.batch_real": 128, "server_epochs": 300},
        "multi": {
            "distill.ipc": 10,
            "distill.iterations": 100,
            "distill.batch_real": 128,
            "server_epochs": 300,
            "rounds": 3,
            "server_embedder": True,
        },
    },
}
#: datasets read from --cifar-dir; the others (MNIST) from --data-dir, digits is bundled
CIFAR_DATASETS = ("cifar10",)
PARTITIONS = {
    "dirichlet-0.1": {"partition": "dirichlet", "alpha": 0.1},
    "dirichlet-0.5": {"partition": "dirichlet", "alpha": 0.5},
    "iid": {"partition": "iid", "alpha": 0.0},
}
SPEED = {"device": "cpu", "distill.mixed_precision": False, "distill.channels_last": False}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _jobs(dataset: str, partition: str, args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    recipe = RECIPES[dataset]
    base = {**recipe["common"], **PARTITIONS[partition], **SPEED, "num_clients": args.num_clients}
    data_dir = args.cifar_dir if dataset in CIFAR_DATASETS else args.data_dir
    if data_dir is not None:
        base["data_dir"] = str(data_dir)
    extra = overrides_from(args.set)  # FedCond jobs only (e.g. distill.augment.layout=sample)
    out = []
    if "fedcond" in args.strategies:
        out.append(("fedcond-oneshot", {**base, "strategy": "fedcond", "rounds": 1, **recipe["fedcond"], **extra}))
    if "fedcond-realinit" in args.strategies:
        out.append(("fedcond-realinit", {**base, "strategy": "fedcond", "rounds": 1, **recipe["fedcond"],
                                         "distill.init": "real", **extra}))
    if "fedcond-multi" in args.strategies and (partition in args.extra_partitions or args.all_extras):
        rounds = recipe["multi"]["rounds"]
        out.append((f"fedcond-multi{rounds}", {**base, "strategy": "fedcond", **recipe["multi"], **extra}))
    if "fedavg" in args.strategies:
        out.append(("fedavg", {**base, "strategy": "fedavg", "rounds": args.fedavg_rounds, "local_epochs": 1}))
    if "fedprox" in args.strategies and (partition in args.extra_partitions or args.all_extras):
        out.append(("fedprox", {**base, "strategy": "fedprox", "rounds": args.fedavg_rounds, "local_epochs": 1}))
    return out


def _independent_check(job: Any, uploads: Path) -> dict[str, int]:
    """Near-copies among the uploads by scikit-learn, independent of fedcond's gate and audit."""
    import numpy as np
    from sklearn.neighbors import NearestNeighbors

    from fedcond.federated.client import client_partition

    flagged = audited = 0
    spec = None
    for path in sorted(uploads.glob("round-*/client-*.npz")):
        partition_id = int(path.stem.split("-")[1]) - 1000  # InProcessGrid's node ids
        data = client_partition(job, partition_id=partition_id, num_partitions=job.federated.num_clients)
        spec = data.spec
        with np.load(path, allow_pickle=False) as archive:
            images = archive["images"]
        mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
        real = np.unique((data.images.numpy() * std + mean).reshape(len(data), -1), axis=0)
        up = (images * std + mean).reshape(len(images), -1)
        pairs = NearestNeighbors(n_neighbors=2).fit(real).kneighbors(real)[0][:, 1]
        closest_pair = float(pairs.min())
        nearest = NearestNeighbors(n_neighbors=1).fit(real).kneighbors(up)[0][:, 0]
        flagged += int((nearest < closest_pair).sum())
        audited += len(up)
    return {"independent_flagged": flagged, "independent_audited": audited}


def _gate_totals(report: Any) -> dict[str, float]:
    """The release gate's flags and its share of the clients' time, over every client and round."""
    totals = {"gate_flagged": 0, "gate_withheld": 0, "gate_uploaded": 0}
    gate_s = distill_s = 0.0
    for entry in report.history:
        for client in (entry.get("clients") or {}).values():
            totals["gate_flagged"] += int(client.get("gate-flagged", 0))
            totals["gate_withheld"] += int(client.get("gate-withheld", 0))
            totals["gate_uploaded"] += int(client.get("gate-uploaded", 0))
            gate_s += float(client.get("gate-seconds", 0.0))
            distill_s += float(client.get("distill-seconds", 0.0))
    share = gate_s / (gate_s + distill_s) if gate_s + distill_s > 0 else 0.0
    return {**totals, "gate_seconds": gate_s, "client_distill_seconds": distill_s, "gate_time_share": share}


def _summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["partition"], r["method"]), []).append(r)
    rows = []
    for (dataset, partition, method), runs in groups.items():
        accs = [r["test_accuracy"] for r in runs]
        fedavg = groups.get((dataset, partition, "fedavg"))
        fedavg_up = statistics.fmean(r["uplink_bytes"] for r in fedavg) if fedavg else None
        fedavg_acc = statistics.fmean(r["test_accuracy"] for r in fedavg) if fedavg else None
        uplink = statistics.fmean(r["uplink_bytes"] for r in runs)
        row = {
            "dataset": dataset,
            "partition": partition,
            "method": method,
            "seeds": len(runs),
            "test_accuracy_mean": statistics.fmean(accs),
            "test_accuracy_std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
            "uplink_bytes": uplink,
            "downlink_bytes": statistics.fmean(r["downlink_bytes"] for r in runs),
            "uplink_ratio_to_fedavg": (uplink / fedavg_up) if fedavg_up else None,
            "wall_seconds_mean": statistics.fmean(r["wall_seconds"] for r in runs),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        }
        for key in ("gate_flagged", "gate_withheld", "independent_flagged", "independent_audited"):
            if all(key in r for r in runs):
                row[key] = sum(r[key] for r in runs)
        if all("gate_time_share" in r for r in runs):
            row["gate_time_share_max"] = max(r["gate_time_share"] for r in runs)
        if method == "fedcond-oneshot" and fedavg_acc is not None:
            row["target_met"] = bool(row["test_accuracy_mean"] >= fedavg_acc and row["uplink_ratio_to_fedavg"] <= 0.1)
        rows.append(row)
    return rows


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| dataset | partition | method | test accuracy | uplink | uplink / FedAvg | wall | peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["uplink_ratio_to_fedavg"]
        lines.append(
            f"| {r['dataset']} | {r['partition']} | {r['method']} | "
            f"{100 * r['test_accuracy_mean']:.2f} ± {100 * r['test_accuracy_std']:.2f}% | "
            f"{r['uplink_bytes'] / 2**20:.3f} MiB | {'-' if ratio is None else f'{ratio:.4f}'} | "
            f"{r['wall_seconds_mean']:.0f} s | {r['peak_rss_mib']:.0f} MiB |"
        )
    return "\n".join(lines)


def _plot(results: list[dict[str, Any]], out: Path) -> None:
    from fedcond.plots import save_line_plot

    for dataset in sorted({r["dataset"] for r in results}):
        for partition in sorted({r["partition"] for r in results if r["dataset"] == dataset}):
            series = {}
            clients = next(r["config"]["num_clients"] for r in results
                           if r["dataset"] == dataset and r["partition"] == partition)
            for r in results:
                if r["dataset"] == dataset and r["partition"] == partition and r["seed"] == results[0]["seed"]:
                    points = [(i, a) for i, a in enumerate(r["accuracy_by_round"]) if a is not None]
                    series[r["method"]] = ([p[0] for p in points], [p[1] for p in points])
            if series:
                save_line_plot(
                    series,
                    out / f"accuracy_{dataset}_{partition}.png",
                    xlabel="round",
                    ylabel="test accuracy",
                    title=f"{dataset}, {partition}, {clients} clients",
                )


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options (:func:`parse_args` adds the checks across options)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", nargs="+", default=["digits"], choices=sorted(RECIPES))
    parser.add_argument("--partitions", nargs="+", default=list(PARTITIONS), choices=list(PARTITIONS))
    parser.add_argument("--extra-partitions", nargs="*", default=["dirichlet-0.1"],
                        help="partitions that also run multi-round FedCond and FedProx")
    parser.add_argument("--all-extras", action="store_true", help="multi-round and FedProx on every partition")
    parser.add_argument("--strategies", nargs="+", default=["fedcond", "fedcond-multi", "fedavg", "fedprox"])
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--fedavg-rounds", type=int, default=20)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="MNIST root (torchvision layout)")
    parser.add_argument("--cifar-dir", type=Path, default=None,
                        help="CIFAR-10 root: torchvision's cifar-10-batches-py/ or the JPEG ImageFolder copy "
                             "(train/, test/); needed for --datasets cifar10")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a FedCond job key, e.g. distill.augment.layout=sample (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished runs of OUT/results.json and continue the interrupted one from its "
                             "server and client checkpoints (same command otherwise)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed options; a dataset without its data folder is refused by name (exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if any(d in CIFAR_DATASETS for d in args.datasets) and args.cifar_dir is None:
        parser.error("--datasets cifar10 needs --cifar-dir (the CIFAR-10 root)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    torch.set_num_threads(args.threads)
    keep_freed_cpu_memory()  # CPU activations re-used instead of page-faulted (fedcond.devices)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    command = recorded_command(argv)
    results: list[dict[str, Any]] = []
    earlier_seconds = 0.0
    earlier = earlier_run(args.out / "results.json", command) if args.resume else None
    if earlier is not None:
        results, earlier_seconds = earlier["results"], earlier["elapsed_seconds"]
        print(f"--resume: {len(results)} finished run(s) kept from {args.out / 'results.json'}", flush=True)
    finished = {(r["dataset"], r["partition"], r["method"], r["seed"]) for r in results}
    started = time.perf_counter() - earlier_seconds
    for dataset in args.datasets:
        for partition in args.partitions:
            for method, mapping in _jobs(dataset, partition, args):
                for seed in args.seeds:
                    if (dataset, partition, method, seed) in finished:
                        continue
                    run_dir = args.out / "runs" / f"{dataset}-{partition}-{method}-seed{seed}"
                    fedcond_run = mapping["strategy"] == "fedcond"
                    job = job_from_mapping({**mapping, "seed": seed, "distill.seed": seed,
                                            **({"out": str(run_dir)} if fedcond_run else {})})
                    policy = (PERMISSIVE if method == "fedcond-realinit"
                              else PERMISSIVE_MULTI if method.startswith("fedcond-multi")
                              else simulated_client_policy(None, strategy=mapping["strategy"]))
                    server_state, client_state = run_dir / CHECKPOINTS, run_dir / CLIENT_CHECKPOINTS
                    resumed = args.resume and (server_state.is_dir() or client_state.is_dir())
                    if not args.resume:  # a fresh run: nothing of an earlier one is continued
                        shutil.rmtree(server_state, ignore_errors=True)
                        shutil.rmtree(client_state, ignore_errors=True)
                    policy = dataclasses.replace(policy, checkpoints=CheckpointPolicy(folder=client_state))
                    checkpoint = RunCheckpoint(server_state, identity=run_identity(job))
                    t0 = time.perf_counter()
                    report = simulate(job, engine="inprocess", policy=policy, checkpoint=checkpoint)
                    if report.test_accuracy is None:  # every reply dropped: no number to compare
                        raise SystemExit(f"{dataset} {partition} {method} seed={seed}: no round trained (see the log)")
                    results.append(
                        {
                            "dataset": dataset,
                            "partition": partition,
                            "method": method,
                            "seed": seed,
                            "test_accuracy": report.test_accuracy,
                            "uplink_bytes": report.uplink_bytes,
                            "downlink_bytes": report.downlink_bytes,
                            "wall_seconds": time.perf_counter() - t0,
                            "peak_rss_mib": _peak_rss_mib(),
                            "accuracy_by_round": [h["test_accuracy"] for h in report.history],
                            "config": mapping,
                            "resumed": resumed,
                            "client_policy": policy.as_dict(),
                            **({**_gate_totals(report), **_independent_check(job, run_dir / "uploads")}
                               if fedcond_run else {}),
                        }
                    )
                    print(
                        f"{dataset} {partition} {method} seed={seed}: {100 * report.test_accuracy:.2f}% "
                        f"uplink {report.uplink_bytes} B, {results[-1]['wall_seconds']:.0f}s",
                        flush=True,
                    )
                    summary = _summarise(results)
                    payload = {
                        "command": command,
                        **machine_facts(),
                        "engine": "inprocess",
                        "torch_threads": args.threads,
                        "elapsed_seconds": time.perf_counter() - started,
                        "peak_rss_mib": _peak_rss_mib(),
                        "summary": summary,
                        "results": results,
                    }
                    (args.out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    summary = _summarise(results)
    table = _markdown(summary)
    (args.out / "table.md").write_text(table + "\n")
    _plot(results, args.out)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
