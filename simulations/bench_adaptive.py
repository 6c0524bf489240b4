"""Benchmark: colluding clients that know FedCond's robust rule, against each choice of reference.

The attack harness of ``bench_robust.py`` runs attackers that act alone and without knowledge
of the rule. This benchmark runs the strongest attack measured against the outlier rule: a
*coalition* that coordinates a label flip. Under Dirichlet(0.1) most classes have one large
honest holder and a few small ones, so a coalition that sends a class's images from all its
members outnumbers the honest holders of that class, and a rule that judges each client by
the *other clients* judges the honest holder by the coalition.

Per seed, an honest FedCond run (``bench_robust.py``'s recipe, one-shot, the default private
client policy; ``--condensation-cache`` reuses its condensations) keeps what the server
received (``OUT/uploads/round-1``). Each attack then builds the sets the server would see:

- ``cycle:N:replace|added:CLASSES``: N colluders (replacing the first N clients' sets, or
  joining as N more clients) each send, for every class ``c`` of the cycle ``CLASSES``,
  ``ipc`` real training images of the next class of the cycle labelled ``c``, and real images
  of every other class; each claims 20 samples per class (within the count cap). Colluders
  hold labelled data of every class, the strongest data an attacker can have.
- ``harness:KIND:N``: the harness attack ``KIND`` on the first N clients (a ``fedcond
  simulate --attack KIND --attackers N`` run's uploads), the non-adaptive reference.

Every rule runs on the same sets (:func:`fedcond.federated.robust.robust_sets` with the
strategy's seed); the server then trains on what the rule kept with the job's recipe and is
tested on the test split. A rule that fails closed trains nothing (accuracy ``null``, the
alarm recorded). Rules:

- ``cap``: the count cap alone (``robust.outlier_nets=0``, the default);
- ``clients``: the outlier rule judged by the other clients (``robust.outlier_nets=2``);
- ``serverK``: the outlier rule judged by K real images per class of the server's own
  training split (``robust.outlier_nets=2 robust.reference_per_class=K``).

    python simulations/bench_adaptive.py --out docs/results/bench_adaptive_digits.json --seeds 0 1 2 \\
        --attacks harness:label-flip:3 cycle:3:replace:1,2,3,4,5,6,7,8,9 cycle:3:replace:0,1,2,3,4 \\
        --rules cap clients server30 --condensation-cache cache --work runs/adaptive
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_robust import RECIPES, SPEED, _peak_rss_mib  # noqa: E402 - simulations/ is a folder of scripts
from bench_server_recipe import client_sets  # noqa: E402
from provenance import earlier_run, machine_facts, recorded_command  # noqa: E402

from fedcond.devices import keep_freed_cpu_memory
from fedcond.distill.synthetic import SyntheticSet
from fedcond.federated.aggregation import aggregate_sets
from fedcond.federated.attacks import AttackConfig
from fedcond.federated.client import load_splits
from fedcond.federated.job import FederatedJob, job_from_mapping
from fedcond.federated.policy import CheckpointPolicy, simulated_client_policy
from fedcond.federated.robust import RobustOutcome, robust_sets
from fedcond.federated.server_app import reference_for_job
from fedcond.federated.server_training import train_global_model
from fedcond.federated.simulation import simulate
from fedcond.federated.validation import ClientSet
from fedcond.training import accuracy

#: the real-sample count each colluder claims per class (the honest upper median is larger)
COLLUDER_CLAIM = 20


@dataclasses.dataclass(frozen=True)
class Attack:
    """One attack of ``--attacks`` (see the module)."""

    name: str
    kind: str  # "cycle" or "harness"
    colluders: int
    replace: bool = True
    cycle: tuple[int, ...] = ()
    harness_kind: str | None = None

    @classmethod
    def parse(cls, text: str) -> Attack:
        parts = text.split(":")
        try:
            if parts[0] == "cycle" and len(parts) == 4 and parts[2] in ("replace", "added"):
                cycle = tuple(int(c) for c in parts[3].split(","))
                if len(cycle) < 2 or len(set(cycle)) != len(cycle):
                    raise ValueError
                return cls(text, "cycle", int(parts[1]), parts[2] == "replace", cycle)
            if parts[0] in ("none", "harness") and (parts[0] == "none" or len(parts) == 3):
                if parts[0] == "none":
                    return cls(text, "harness", 0)
                return cls(text, "harness", int(parts[2]), harness_kind=parts[1])
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(
            f"attack {text!r}: expected none, harness:KIND:N or cycle:N:replace|added:C1,C2,... (distinct classes)"
        )


RULES: dict[str, dict[str, Any]] = {"cap": {"outlier_nets": 0}, "clients": {"outlier_nets": 2}}


def rule_overrides(name: str) -> dict[str, Any]:
    """The ``robust.*`` settings of a rule name (``cap``, ``clients``, ``serverK``)."""
    if name in RULES:
        return RULES[name]
    if name.startswith("server") and name[6:].isdigit() and int(name[6:]) > 0:
        return {"outlier_nets": 2, "reference_per_class": int(name[6:])}
    raise argparse.ArgumentTypeError(f"rule {name!r}: expected cap, clients or serverK (K real images per class)")


def _job(args: argparse.Namespace, seed: int, out: Path | None = None) -> FederatedJob:
    recipe = RECIPES[args.dataset]
    mapping = {
        **recipe["common"], **SPEED, **recipe["fedcond"], "partition": "dirichlet", "alpha": args.alpha,
        "num_clients": args.num_clients, "strategy": "fedcond", "rounds": 1, "seed": seed,
        "robust.enabled": False,  # the uploads are what matters here; the rules run below
    }
    if args.data_dir is not None:
        mapping["data_dir"] = str(args.data_dir)
    if out is not None:
        mapping["out"] = str(out)
    return job_from_mapping(mapping)


def uploaded_sets(args: argparse.Namespace, seed: int, attack: AttackConfig | None) -> list[ClientSet]:
    """The sets the server received in round 1 of a FedCond run (run once, kept under ``--work``)."""
    tag = "none" if attack is None else f"{attack.kind}-{attack.attackers}"
    folder = args.work / f"{args.dataset}-seed{seed}-{tag}"
    finished = folder / "finished"  # written once the run has returned
    job = _job(args, seed, folder)
    if not finished.is_file():
        policy = simulated_client_policy(None, strategy="fedcond")
        if args.condensation_cache is not None:
            cache = args.condensation_cache / f"{args.dataset}-seed{seed}"
            cache.mkdir(parents=True, exist_ok=True)
            policy = dataclasses.replace(policy, checkpoints=CheckpointPolicy(folder=cache))
        if folder.exists():
            raise SystemExit(f"{folder} holds an unfinished run: remove it and start again")
        simulate(job, engine="inprocess", attack=attack, policy=policy)
        finished.write_text("the run returned; uploads/round-1 holds what the server received\n")
    return client_sets(folder / "uploads", job)[0]


def coalition(sets: list[ClientSet], attack: Attack, *, train, ipc: int, seed: int) -> tuple[list[ClientSet], set[int]]:
    """The honest sets with ``attack``'s colluders (replacing the first clients' sets, or added)."""
    mapping = {c: c for c in range(train.spec.num_classes)}
    for i, c in enumerate(attack.cycle):
        mapping[c] = attack.cycle[(i + 1) % len(attack.cycle)]
    ordered = sorted(sets, key=lambda s: s.node_id)
    if attack.replace:
        ids = [s.node_id for s in ordered[: attack.colluders]]
    else:
        ids = [max(s.node_id for s in ordered) + 1 + k for k in range(attack.colluders)]
    template = ordered[0].synthetic
    generator = torch.Generator().manual_seed(seed * 100 + 17)
    images, labels = [], []
    for c in range(train.spec.num_classes):  # every colluder sends the same images: the medians' weight is counted
        pool = (train.labels == mapping[c]).nonzero().flatten()
        images.append(train.images[pool[torch.randperm(len(pool), generator=generator)[:ipc]]])
        labels.append(torch.full((ipc,), c, dtype=template.labels.dtype))
    counts = torch.full((train.spec.num_classes,), COLLUDER_CLAIM, dtype=torch.int64)
    synthetic = SyntheticSet(torch.cat(images).float(), torch.cat(labels), {})
    colluders = [ClientSet(node_id=i, synthetic=synthetic, class_counts=counts, metrics={}) for i in ids]
    return [s for s in ordered if s.node_id not in ids] + colluders, set(ids)


def _fingerprint(sets: list[ClientSet]) -> str:
    digest = hashlib.sha256()
    for s in sorted(sets, key=lambda s: s.node_id):
        decoded = s.synthetic.decoded()
        digest.update(str(s.node_id).encode())
        digest.update(decoded.images.float().numpy().tobytes())
        digest.update(decoded.labels.numpy().tobytes())
        digest.update(s.class_counts.numpy().tobytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--work", type=Path, required=True, help="folder for the runs whose uploads are attacked")
    parser.add_argument("--dataset", default="digits", choices=sorted(RECIPES))
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--attacks", nargs="+", type=Attack.parse, default=[Attack.parse("none")])
    parser.add_argument("--rules", nargs="+", default=["cap", "clients", "server30"])
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--condensation-cache", type=Path, default=None, metavar="DIR")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --out and run the rest")
    args = parser.parse_args(argv)
    try:
        rules = {name: rule_overrides(name) for name in args.rules}
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    keep_freed_cpu_memory()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    record: dict[str, Any] = {
        "command": recorded_command(argv),
        **machine_facts(),
        "torch_threads": torch.get_num_threads(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "attacks"},
        "attacks": [a.name for a in args.attacks],
        "results": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    earlier = earlier_run(args.out, record["command"]) if args.resume else None
    if earlier is not None:
        record["results"] = earlier["results"]
    done = {(r["seed"], r["attack"], r["rule"]) for r in record["results"]}
    for seed in args.seeds:
        job = _job(args, seed)
        fed = job.federated
        splits = load_splits(job.data)
        trained: dict[str, float] = {}  # the same kept sets train the same model: train once
        for attack in args.attacks:
            if all((seed, attack.name, rule) in done for rule in rules):
                continue
            if attack.kind == "harness":
                harness = None if attack.colluders == 0 else AttackConfig(attack.harness_kind, attack.colluders)
                sets = uploaded_sets(args, seed, harness)
                hostile = {s.node_id for s in sorted(sets, key=lambda s: s.node_id)[: attack.colluders]}
            else:
                sets, hostile = coalition(uploaded_sets(args, seed, None), attack, train=splits.train,
                                          ipc=fed.distill.ipc, seed=seed)
            for rule, overrides in rules.items():
                if (seed, attack.name, rule) in done:
                    continue
                config = dataclasses.replace(fed.robust, enabled=True, **overrides)
                start = time.perf_counter()
                outcome: RobustOutcome = robust_sets(
                    sets, spec=splits.spec, config=config, model_name=fed.model, seed=fed.seed * 1000 + 701,
                    ipc=fed.distill.ipc,
                    reference=reference_for_job(splits, dataclasses.replace(fed, robust=config)),
                )
                row: dict[str, Any] = {
                    "seed": seed,
                    "attack": attack.name,
                    "rule": rule,
                    "robust": {f"robust.{k}": v for k, v in overrides.items()},
                    "alarm": outcome.alarm,
                    "honest_rejected": sorted(n for n in outcome.rejected if n not in hostile),
                    "hostile_rejected": sorted(n for n in outcome.rejected if n in hostile),
                    "test_accuracy": None,
                }
                if outcome.sets:
                    key = _fingerprint(outcome.sets)
                    if key not in trained:
                        union = aggregate_sets(outcome.sets, num_classes=splits.spec.num_classes)
                        model = train_global_model(
                            union, spec=splits.spec, model_name=fed.model, epochs=fed.server_epochs,
                            lr=fed.server_lr, generator=torch.Generator().manual_seed(fed.seed * 1000 + 501),
                        )
                        trained[key] = accuracy(model, splits.test)
                    row["test_accuracy"] = trained[key]
                    row["union_images"] = sum(len(s.synthetic.labels) for s in outcome.sets)
                row["wall_seconds"] = time.perf_counter() - start
                record["results"].append(row)
                record["peak_rss_mib"] = _peak_rss_mib()
                args.out.write_text(json.dumps(record, indent=1, default=str) + "\n")
                acc = row["test_accuracy"]
                print(
                    f"seed {seed} {attack.name:38s} {rule:9s}: "
                    f"{'alarm, no model' if acc is None else f'{100 * acc:.2f}%'} "
                    f"honest rejected {len(row['honest_rejected'])}, hostile rejected {len(row['hostile_rejected'])} "
                    f"({row['wall_seconds']:.0f}s)",
                    flush=True,
                )
    print(_table(record["results"]))
    return 0


def _table(results: list[dict[str, Any]]) -> str:
    """Mean ± std test accuracy (%) per attack and rule over the trained models, with alarms."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        cells.setdefault((r["attack"], r["rule"]), []).append(r)
    rules = sorted({r for _, r in cells}, key=[r["rule"] for r in results].index)
    lines = ["| attack | " + " | ".join(rules) + " |", "|---" * (len(rules) + 1) + "|"]
    for attack in sorted({a for a, _ in cells}, key=[r["attack"] for r in results].index):
        row = []
        for rule in rules:
            runs = cells.get((attack, rule), [])
            accs = torch.tensor([100 * r["test_accuracy"] for r in runs if r["test_accuracy"] is not None])
            alarms = sum(r["test_accuracy"] is None for r in runs)
            spread = float(accs.std(correction=0))  # population std, as the docs' tables
            text = "-" if not len(accs) else f"{float(accs.mean()):.2f} ± {spread:.2f}"
            row.append(text + (f" ({alarms} alarm{'s' * (alarms > 1)})" if alarms else ""))
        lines.append(f"| {attack} | " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
