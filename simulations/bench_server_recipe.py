"""Benchmark: the FedCond server's training recipe on a finished run's uploads.

A FedCond run keeps exactly what reached the server (``OUT/uploads/round-R/client-K.npz``).
This script rebuilds the server's training set from those files (through the same robust rule
and aggregation as :class:`~fedcond.federated.strategy.FedCond`) and trains the global model
with each requested recipe, so server-side choices (epochs, learning rate) are compared on
identical client sets without condensing again. With the run's own recipe it reproduces the
run's accuracy (same seeds, same union).

Each upload's per-class real counts come from its metadata (``client_reported["class-counts"]``);
for uploads that lack them the counts are recomputed from the job's partition and matched to
the upload by its example count and held classes (recorded as ``class_counts_source``).

Usage::

    python simulations/bench_server_recipe.py --run RUN_FOLDER --results RESULTS.json \\
        --data-dir ../shared/data --epochs 300 --out docs/results/server_recipe_X.json

``RUN_FOLDER`` holds ``uploads/``; ``RESULTS.json`` is the ``bench_federated.py`` output that
made it (its ``config`` gives the job).

The JSON is written after each recipe, and each recipe's training is checkpointed every 10
epochs (beside ``--out``, in ``OUT.checkpoints/``): ``--resume`` (same command) keeps the
finished recipes and continues the interrupted one, so a recipe longer than one sitting spreads
over several (its ``seconds`` then cover the last part only, and the row says ``"resumed"``).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import earlier_run, machine_facts, recorded_command  # noqa: E402 - simulations/ is a folder of scripts

from fedcond.distill.synthetic import SyntheticSet
from fedcond.federated.aggregation import aggregate_sets
from fedcond.federated.client import client_partition, federated_test_set, load_splits
from fedcond.federated.job import FederatedJob, job_from_mapping
from fedcond.federated.robust import robust_sets
from fedcond.federated.server_training import train_global_model
from fedcond.federated.validation import ClientSet
from fedcond.training import accuracy


def partition_counts(job: FederatedJob) -> list[np.ndarray]:
    """Real samples per class of every partition of ``job`` (the split its clients used)."""
    n = job.federated.num_clients
    return [client_partition(job, partition_id=i, num_partitions=n).class_counts().numpy() for i in range(n)]


def client_sets(uploads: Path, job: FederatedJob, *, server_round: int = 1) -> tuple[list[ClientSet], str]:
    """The round's uploads as the server's client sets, and where their class counts came from."""
    files = sorted((uploads / f"round-{server_round}").glob("client-*.npz"))
    if not files:
        raise SystemExit(f"error: no uploads under {uploads / f'round-{server_round}'}")
    counts_by_partition: list[np.ndarray] | None = None
    sources = set()
    sets = []
    for path in files:
        with np.load(path, allow_pickle=False) as archive:
            images, labels = torch.from_numpy(archive["images"]), torch.from_numpy(archive["labels"])
            meta = json.loads(str(archive["meta"]))
        reported = meta.get("client_reported", {})
        counts = reported.get("class-counts")
        if counts is not None:
            sources.add("upload metadata")
        else:
            counts_by_partition = counts_by_partition or partition_counts(job)
            held = set(labels.unique().tolist())
            matches = [c for c in counts_by_partition
                       if int(c.sum()) == reported.get("num-examples") and held <= set(np.flatnonzero(c).tolist())]
            if len(matches) != 1:
                raise SystemExit(f"error: {path} matches {len(matches)} partitions of the job, not one")
            counts = matches[0].tolist()
            sources.add("job partition")
        synthetic = SyntheticSet(images, labels, {"num_classes": meta["num_classes"], "factor": meta.get("factor", 1)})
        sets.append(ClientSet(int(meta["node_id"]), synthetic, torch.tensor(counts, dtype=torch.int64), {}))
    return sets, " + ".join(sorted(sources))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run folder holding uploads/")
    parser.add_argument("--results", type=Path, required=True, help="the bench_federated.py JSON of that run")
    parser.add_argument("--data-dir", type=Path, default=None, help="the job's data dir on this machine")
    parser.add_argument("--epochs", type=int, nargs="+", default=[300], help="server epochs, one recipe each")
    parser.add_argument("--lr", type=float, default=None, help="server learning rate (default: the job's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished recipes of --out and continue the interrupted one")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    source = json.loads(args.results.read_text())
    config = dict(source["results"][0]["config"])
    if args.data_dir is not None:
        config["data_dir"] = str(args.data_dir)
    job = job_from_mapping(config)
    fed = job.federated
    sets, counts_source = client_sets(args.run / "uploads", job)
    spec = load_splits(job.data).spec
    outcome = robust_sets(sets, spec=spec, config=fed.robust, model_name=fed.model, seed=fed.seed * 1000 + 701,
                          ipc=fed.distill.ipc)
    union = aggregate_sets(outcome.sets, num_classes=spec.num_classes)
    test = federated_test_set(job)
    lr = fed.server_lr if args.lr is None else args.lr
    report: dict[str, Any] = {
        "command": recorded_command(argv),
        **machine_facts(),
        "torch_threads": torch.get_num_threads(),
        "source_run": {"results": str(args.results), "command": source.get("command"),
                       "commit": source.get("commit"), "test_accuracy": source["results"][0]["test_accuracy"],
                       "server_epochs": fed.server_epochs},
        "class_counts_source": counts_source,
        "clients": len(sets),
        "union_images": len(union),
        "rejected": outcome.rejected,
        "recipes": [],
    }
    print(f"union of {len(sets)} clients: {len(union)} images; the run's own recipe scored "
          f"{100 * report['source_run']['test_accuracy']:.2f}% with {fed.server_epochs} epochs", flush=True)
    checkpoints = args.out.with_name(args.out.name + ".checkpoints")
    earlier = earlier_run(args.out, report["command"]) if args.resume else None
    if earlier is not None:
        report["recipes"] = earlier["recipes"]
    if not args.resume and checkpoints.is_dir():
        shutil.rmtree(checkpoints)  # a fresh benchmark continues nothing of an earlier one
    done = {(r["server_epochs"], r["server_lr"]) for r in report["recipes"]}
    for epochs in args.epochs:
        if (epochs, lr) in done:
            continue
        checkpoint = checkpoints / f"epochs-{epochs}-lr-{lr:g}.pt"
        resumed = checkpoint.is_file()
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(fed.seed * 1000 + 500 + 1)  # the strategy's round-1 seed
        model = train_global_model(union, spec=spec, model_name=fed.model, epochs=epochs, lr=lr, generator=generator,
                                   checkpoint=checkpoint)
        row = {"server_epochs": epochs, "server_lr": lr, "test_accuracy": accuracy(model, test),
               "seconds": time.perf_counter() - start, "resumed": resumed}
        report["recipes"].append(row)
        print(f"  {epochs} epochs, lr {lr}: {100 * row['test_accuracy']:.2f}% ({row['seconds']:.0f}s)", flush=True)
        report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
