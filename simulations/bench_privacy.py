"""Privacy benchmark: real-data model vs real-init DM vs noise-init DM vs DP-DM.

For each dataset: condense with every method, evaluate (K fresh ConvNets, mean ± std), and
audit (nearest-neighbour match rate, strongest membership attack's AUC and TPR at low FPR).
The real-data row is the audit's reference model (``--reference-size`` real images).

Writes ``OUT/bench_privacy.json`` (rows, settings, peak RSS, the command) and
``OUT/<dataset>_<method>_roc.png`` / ``..._nn.png``. A row is written when it is finished;
within a row, ``OUT/stages/`` keeps the condensed set, its evaluation and the dataset's
real-data reference attack as each is finished, so that ``--resume`` after a kill continues
from the last finished stage (a CIFAR-10 row runs for hours on a CPU core).

Examples (the digits table of docs/privacy.md; CIFAR-10 from its JPEG ImageFolder copy or
torchvision's ``cifar-10-batches-py/`` under ``--cifar-dir``)::

    python simulations/bench_privacy.py --datasets digits --out results/privacy
    python simulations/bench_privacy.py --datasets cifar10 --cifar-dir ../shared/data/cifar10-jpeg \\
        --out results/privacy-cifar10
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import earlier_run, machine_facts, other_machine, recorded_command, same_command  # noqa: E402 - simulations/ is a folder of scripts

from fedcond.config import AuditConfig, AugmentConfig, DataConfig, DistillConfig, EvalConfig
from fedcond.data.registry import load_dataset
from fedcond.devices import keep_freed_cpu_memory
from fedcond.distill.augment import LAYOUTS
from fedcond.distill.condenser import get_condenser
from fedcond.distill.evaluate import EvalResult, evaluate_synthetic
from fedcond.distill.synthetic import SyntheticSet
from fedcond.privacy.audit import run_audit
from fedcond.privacy.figures import save_nearest_neighbours, save_roc
from fedcond.privacy.membership import MembershipResult
from fedcond.privacy.private_condensation import PrivateCondensation

logger = logging.getLogger("bench_privacy")


#: the datasets this benchmark reads, and where from: bundled, --data-dir or --cifar-dir
DATASETS = ("digits", "mnist", "cifar10")
#: the rows of each dataset: DM from real images, DM from noise, DP-DM (one row per --epsilons value)
METHODS = ("real-init", "noise-init", "dp")


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options (:func:`parse_args` adds the checks across options)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["digits"], help=f"any of {', '.join(DATASETS)}")
    p.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                   help="MNIST root (torchvision layout)")
    p.add_argument("--cifar-dir", type=Path, default=None,
                   help="CIFAR-10 root: torchvision's cifar-10-batches-py/ or the JPEG ImageFolder copy "
                        "(train/, test/); needed for --datasets cifar10")
    p.add_argument("--out", type=Path, default=Path("results/privacy"))
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--iterations", type=int, default=200, help="DM iterations (all methods)")
    p.add_argument("--batch-real", type=int, default=64, help="real images per class (non-private DM)")
    p.add_argument("--dp-batch-real", type=int, default=256, help="expected real images per class under DP")
    p.add_argument("--epsilons", type=float, nargs="*", default=[1.0, 10.0])
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--dp-clip", type=float, default=0.6, help="clip bound on the RMS-scaled embedding")
    p.add_argument("--eval-runs", type=int, default=3)
    p.add_argument("--eval-epochs", type=int, default=300)
    p.add_argument("--audit-epochs", type=int, default=100)
    p.add_argument("--shadow-models", type=int, default=4)
    p.add_argument("--reference-size", type=int, default=1000)
    p.add_argument("--max-candidates", type=int, default=1000)
    p.add_argument("--quantile", type=float, default=AuditConfig().calibration_quantile,
                   help="nearest-neighbour threshold calibration quantile (small test sets need a larger one)")
    p.add_argument("--no-feature-space", action="store_true")
    p.add_argument("--methods", nargs="*", default=list(METHODS), help=f"any of {', '.join(METHODS)}")
    p.add_argument("--no-bf16", action="store_true", help="fp32 embeddings (faster on CPUs without bf16 units)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="keep the rows of OUT/bench_privacy.json written by the same command and run the rest")
    p.add_argument("--dm-dsa-layout", choices=LAYOUTS, default=AugmentConfig().layout,
                   help="DSA parameter sharing of the non-private DM rows (DP always uses class)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed options; an unknown dataset, or CIFAR-10 without its folder, is refused by name (exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.datasets) - set(DATASETS)):
        parser.error(f"--datasets: unknown {unknown} ({', '.join(DATASETS)})")
    if unknown := sorted(set(args.methods) - set(METHODS)):
        parser.error(f"--methods: unknown {unknown} ({', '.join(METHODS)})")
    if "cifar10" in args.datasets and args.cifar_dir is None:
        parser.error("--datasets cifar10 needs --cifar-dir (the CIFAR-10 root)")
    return args


def data_config(name: str, args: argparse.Namespace) -> DataConfig | str:
    """Where ``name`` is read from: bundled (digits), ``--cifar-dir`` (cifar10) or ``--data-dir``."""
    if name == "digits":
        return "digits"
    return DataConfig(name, data_dir=args.cifar_dir if name == "cifar10" else args.data_dir)


def condense(method: str, epsilon: float | None, args: argparse.Namespace, splits) -> tuple[SyntheticSet, dict]:
    dp = epsilon is not None
    config = DistillConfig(
        ipc=args.ipc,
        iterations=args.iterations,
        init="real" if method == "real-init" else "noise",
        batch_real=args.dp_batch_real if dp else args.batch_real,
        seed=args.seed,
        mixed_precision=not args.no_bf16,
        augment=AugmentConfig(layout=args.dm_dsa_layout),  # DP forces "class" whatever this says
    )
    if dp:
        private = PrivateCondensation(
            # a benchmark is a research run: seeded noise, so it repeats (the library's default is secret)
            {"epsilon": epsilon, "delta": args.delta, "clip_norm": args.dp_clip, "noise_seed": args.seed},
            distill=config,
            class_counts=splits.train.class_counts(),
        )
        result = private.condense(get_condenser("dm", config, real_statistics=private.statistics), splits.train)
    else:
        result = get_condenser("dm", config).condense(splits.train)
    meta = result.synthetic.meta
    extra: dict[str, Any] = {}
    if dp:  # the set's own record of the spent budget and the plan
        extra = {"sample_rate": meta["dp_sample_rate"], "noise_multiplier": meta["dp_noise_multiplier"],
                 "dp_noise": meta["dp_noise"], "epsilon": meta["epsilon"], "delta": meta["delta"]}
    extra.update({"distill_seconds": result.seconds, "iterations": config.iterations, "batch_real": config.batch_real})
    return result.synthetic, extra


class Stages:
    """The finished stages of unfinished rows, under ``OUT/stages/``, each tagged with the command.

    A stage is read back only under ``--resume`` and only when the same command wrote it on the
    same kind of machine, so a stage of another run is recomputed (and overwritten) instead of
    being mixed into this one.
    """

    def __init__(self, folder: Path, command: str, *, resume: bool) -> None:
        self.folder, self.command, self.resume = folder, command, resume
        self.machine = {key: value for key, value in machine_facts().items() if key.startswith("cpu_")}
        self.kept: list[str] = []  # the stages read back, in order (a row's ``seconds`` exclude them)

    def _path(self, key: str, suffix: str) -> Path:
        return self.folder / f"{key}{suffix}"

    def load(self, key: str) -> dict[str, Any] | None:
        """The JSON stage ``key`` written by this command, or ``None``."""
        path = self._path(key, ".json")
        if not (self.resume and path.exists()):
            return None
        stage = json.loads(path.read_text())
        if not same_command(stage.get("command", ""), self.command) or other_machine(stage) is not None:
            return None
        logger.info("%s: kept from the earlier run (--resume)", key)
        if key not in self.kept:
            self.kept.append(key)
        return stage["value"]

    def save(self, key: str, value: dict[str, Any]) -> None:
        """Write stage ``key`` (to a temporary name first, so a kill leaves no half-written stage)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(key, ".json")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"command": self.command, **self.machine, "value": value}) + "\n")
        tmp.replace(path)

    def kept_for(self, slug: str) -> list[str]:
        """The stages of row ``slug`` read back (its set, its evaluation), not those of a row whose
        slug merely starts the same (``dp_eps1`` and ``dp_eps10``)."""
        return [key for key in self.kept if key in (slug, f"{slug}_evaluation")]

    def load_set(self, key: str) -> tuple[SyntheticSet, dict[str, Any]] | None:
        """The set condensed for ``key`` by this command and its stage's facts, or ``None``."""
        extra = self.load(key)
        if extra is None:
            return None
        return SyntheticSet.load(self._path(key, ".npz")), extra

    def save_set(self, key: str, synthetic: SyntheticSet, extra: dict[str, Any]) -> None:
        """Keep the condensed set beside the stage that vouches for it (set first, stage last)."""
        synthetic.save(self._path(key, ".npz"))
        self.save(key, extra)


def condense_or_resume(
    method: str, epsilon: float | None, args: argparse.Namespace, splits, stages: Stages, key: str
) -> tuple[SyntheticSet, dict]:
    """The row's condensed set: read back from ``stages`` under ``--resume``, else condensed now."""
    if (kept := stages.load_set(key)) is not None:
        return kept
    start = time.perf_counter()
    synthetic, extra = condense(method, epsilon, args, splits)
    logger.info("%s: condensed in %.0fs", key, time.perf_counter() - start)
    stages.save_set(key, synthetic, extra)
    return synthetic, extra


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = recorded_command(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_cpu_memory()  # CPU activations re-used instead of page-faulted (fedcond.devices)
    args.out.mkdir(parents=True, exist_ok=True)
    audit_config = AuditConfig(
        shadow_models=args.shadow_models,
        target_epochs=args.audit_epochs,
        reference_size=args.reference_size,
        max_candidates=args.max_candidates,
        calibration_quantile=args.quantile,
        feature_space=not args.no_feature_space,
        seed=args.seed,
    )
    eval_config = EvalConfig(runs=args.eval_runs, epochs=args.eval_epochs)
    report_path = args.out / "bench_privacy.json"
    rows = (earlier_run(report_path, command) or {}).get("rows", []) if args.resume else []
    finished = {(r["dataset"], r["method"]) for r in rows}
    stages = Stages(args.out / "stages", command, resume=args.resume)
    for name in args.datasets:
        splits = load_dataset(data_config(name, args))
        reference = None
        if (kept := stages.load(f"{name}_reference")) is not None:
            reference = (MembershipResult.from_dict(kept["result"]), kept["accuracy"])
        plan: list[tuple[str, float | None]] = []
        for method in args.methods:
            plan += [(method, e) for e in args.epsilons] if method == "dp" else [(method, None)]
        for method, epsilon in plan:
            label = method if epsilon is None else f"dp eps={epsilon:g}"
            if (name, label) in finished:
                logger.info("%s %s: kept from the earlier run (--resume)", name, label)
                continue
            start = time.perf_counter()
            slug = f"{name}_{label.replace(' ', '_').replace('=', '')}"
            synthetic, extra = condense_or_resume(method, epsilon, args, splits, stages, slug)
            if (accuracies := stages.load(f"{slug}_evaluation")) is None:
                accuracies = {"accuracies": evaluate_synthetic(synthetic, splits.test, eval_config,
                                                               seed=args.seed).accuracies}
                stages.save(f"{slug}_evaluation", accuracies)
            acc = EvalResult(accuracies["accuracies"])
            report = run_audit(synthetic, splits, audit_config, reference=reference)
            if reference is None:
                reference = (report.reference, report.details["reference_accuracy"])
                stages.save(f"{name}_reference", {"result": report.reference.to_dict(), "accuracy": reference[1]})
            ref = reference[0].strongest
            if not any(r["dataset"] == name and r["method"].startswith("real-data model") for r in rows):
                rows.append(
                    {
                        "dataset": name,
                        "method": f"real-data model ({report.details['reference_size']} images)",
                        "test_accuracy_mean": report.details["reference_accuracy"],
                        "test_accuracy_std": None,
                        "nn_match_rate": None,
                        "mia_auc": ref.auc,
                        "mia_attack": ref.attack,
                        "mia_tpr_at_1pct_fpr": ref.tpr_at_1pct_fpr,
                        "mia_tpr_at_01pct_fpr": ref.tpr_at_01pct_fpr,
                    }
                )
            strongest = report.target.strongest
            save_roc({label: report.target, "real": report.reference}, args.out / f"{slug}_roc.png")
            save_nearest_neighbours(
                report.recoverability.pixel,
                synthetic.images,
                splits.train.images,
                splits.test.images[report.recoverability.reference_indices],
                splits.spec,
                args.out / f"{slug}_nn.png",
                synthetic_labels=synthetic.labels,
                train_labels=splits.train.labels,
                held_out_labels=splits.test.labels[report.recoverability.reference_indices],
            )
            rows.append(
                {
                    "dataset": name,
                    "method": label,
                    "test_accuracy_mean": acc.mean,
                    "test_accuracy_std": acc.std,
                    "test_accuracies": acc.accuracies,
                    "nn_match_rate": report.recoverability.nn_match_rate,
                    "pixel_nn_match_rate": report.recoverability.pixel.nn_match_rate,
                    "nn_distance_ratio": report.recoverability.nn_distance_ratio,
                    "nn_distance_ratio_fresh": report.recoverability.pixel.nn_distance_ratio_fresh,
                    "mia_auc": strongest.auc,
                    "mia_attack": strongest.attack,
                    "mia_tpr_at_1pct_fpr": strongest.tpr_at_1pct_fpr,
                    "mia_tpr_at_01pct_fpr": strongest.tpr_at_01pct_fpr,
                    "verdict": report.verdict,
                    **extra,
                    "seconds": time.perf_counter() - start,
                    "stages_kept": stages.kept_for(slug),
                }
            )
            logger.info("%s", json.dumps(rows[-1]))
            write(report_path, args, rows, command=command)
    write(report_path, args, rows, command=command)
    for r in rows:
        acc = r["test_accuracy_mean"]
        std = r["test_accuracy_std"]
        nn = r["nn_match_rate"]
        sys.stdout.write(
            f"| {r['dataset']} | {r['method']} | {100 * acc:.1f}{'' if std is None else f' ± {100 * std:.1f}'} | "
            f"{'-' if nn is None else f'{100 * nn:.1f}%'} | {r['mia_auc']:.3f} ({r['mia_attack']}) | "
            f"{100 * r['mia_tpr_at_1pct_fpr']:.1f}% | {100 * r['mia_tpr_at_01pct_fpr']:.1f}% | "
            f"{r.get('epsilon', '-')} |\n"
        )
    return 0


def write(path: Path, args: argparse.Namespace, rows: list[dict[str, Any]], *, command: str) -> None:
    payload = {
        "command": command,
        **machine_facts(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "accuracy": "mean ± std over eval runs (one condensation seed)",
        "rows": rows,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
