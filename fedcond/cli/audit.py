"""``fedcond audit``: recoverability and membership-inference audit of a synthetic set."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedcond.cli.common import (
    CommandError,
    add_common_arguments,
    add_config_arguments,
    add_data_arguments,
    config_values,
    console,
    load_data,
    prepare_run_folder,
    print_table,
    write_metrics,
)
from fedcond.config import AuditConfig, parse_config
from fedcond.devices import resolve_device
from fedcond.distill.synthetic import SyntheticSet

__all__ = ["register"]

#: the defaults the flags show in their help (``None`` flags leave the config's default standing)
_DEFAULTS = AuditConfig()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``audit`` subcommand and its flags to ``subparsers``."""
    audit = subparsers.add_parser(
        "audit", help="memorisation and membership-inference audit of a synthetic set"
    )
    audit.add_argument("--synthetic", type=Path, required=True, help="synthetic set file (.npz)")
    add_data_arguments(audit, default=None, default_help="the dataset recorded in the synthetic set, else digits")
    audit.add_argument(
        "--shadow-models",
        type=int,
        default=None,
        help=f"LiRA shadow models per target (default {_DEFAULTS.shadow_models})",
    )
    audit.add_argument(
        "--target-epochs",
        type=int,
        default=None,
        help=f"epochs of every attacked/shadow model (default {_DEFAULTS.target_epochs})",
    )
    audit.add_argument(
        "--reference-size",
        type=int,
        default=None,
        help=f"real images of the reference model (default {_DEFAULTS.reference_size})",
    )
    audit.add_argument(
        "--quantile",
        type=float,
        default=None,
        help=f"nearest-neighbour calibration quantile (default {_DEFAULTS.calibration_quantile})",
    )
    audit.add_argument("--no-feature-space", action="store_true", help="pixel-space nearest neighbours only")
    audit.add_argument(
        "--reference-cache",
        type=Path,
        default=None,
        metavar="FILE",
        help="JSON file holding the real-data reference: read when it exists and matches, written when absent",
    )
    add_config_arguments(
        audit,
        config_help="TOML file of AuditConfig keys, at the top level or in an [audit] table; flags override it",
        set_help="any AuditConfig key, e.g. significance=0.05 (repeatable; overrides the file and the flags)",
    )
    # None = "not given": a config file's seed then stands (the flag overrides the file)
    add_common_arguments(audit, default_out="runs/audit", from_config=("seed",))
    audit.set_defaults(run=run_audit_command)


def _check_cache_path(cache: Path, out: Path) -> None:
    """Refuse a reference-cache path the audit could not write, or one of the run's own files."""
    cache = cache.expanduser()
    if cache.exists() and not cache.is_file():
        raise CommandError(f"--reference-cache {cache} exists and is not a file")
    if cache.resolve().parent == out.resolve() and cache.name in ("metrics.json", "roc.png", "nearest_neighbours.png"):
        raise CommandError(f"--reference-cache {cache} would be overwritten by the audit's own {cache.name}")
    parent = next(p for p in (cache.parent, *cache.parent.parents) if p.exists())  # the nearest existing one
    if not parent.is_dir():
        raise CommandError(f"--reference-cache {cache}: {parent} is not a folder")


def run_audit_command(args: argparse.Namespace) -> int:
    """Run ``fedcond audit``: write ``metrics.json``, ``nearest_neighbours.png`` and ``roc.png``."""
    from fedcond.privacy.audit import LEAKS, run_audit
    from fedcond.privacy.figures import save_nearest_neighbours, save_roc
    from fedcond.privacy.reference import ReferenceCacheError, load_reference, reference_identity, save_reference

    out = prepare_run_folder(args.out, overwrite=args.overwrite)
    flags = {
        "shadow_models": args.shadow_models,
        "target_epochs": args.target_epochs,
        "reference_size": args.reference_size,
        "calibration_quantile": args.quantile,
        "feature_space": False if args.no_feature_space else None,
        "seed": args.seed,
    }
    values = config_values(file=args.config, section="audit", flags=flags, overrides=args.overrides)
    config = parse_config(AuditConfig, values)
    synthetic = SyntheticSet.load(args.synthetic)
    if args.dataset is None:  # audit against the data the set says it was made from
        recorded = synthetic.meta.get("dataset")
        args.dataset = str(recorded or "digits")
        where = "recorded in the synthetic set" if recorded else "the default; the set records none, give --dataset"
        console.log(f"audit: dataset {args.dataset} ({where})")
    splits = load_data(args)
    device = resolve_device(args.device)
    cache, reference = args.reference_cache, None
    identity = reference_identity(splits, config) if cache is not None else {}
    if cache is not None:
        _check_cache_path(cache, out)  # before the audit: a bad path must not cost a finished run
    if cache is not None and cache.exists():
        try:
            reference = load_reference(cache, identity=identity)
        except ReferenceCacheError as exc:
            raise CommandError(str(exc)) from exc
        console.log(f"audit: reference read from {cache}")
    with console.status("auditing") as status:

        def stage(message: str) -> None:
            status.update(f"audit: {message}")
            console.log(f"audit: {message}")  # a lasting, timed line: the spinner alone leaves none in a log

        report = run_audit(synthetic, splits, config, device=device, status=stage, reference=reference)
    space = report.recoverability.strongest  # the pairs behind the headline match rate
    ref_idx = report.recoverability.reference_indices
    decoded = synthetic.decoded()  # the audit's rows: a multi-formation set's decoded tiles
    save_nearest_neighbours(
        space,
        decoded.images,
        splits.train.images,
        splits.test.images[ref_idx],
        splits.spec,
        out / "nearest_neighbours.png",
        synthetic_labels=decoded.labels,
        train_labels=splits.train.labels,
        held_out_labels=splits.test.labels[ref_idx],
    )
    save_roc({"synthetic": report.target, "real": report.reference}, out / "roc.png")
    metrics: dict[str, Any] = {
        "dataset": splits.spec.name,
        "synthetic": str(args.synthetic),
        "synthetic_meta": synthetic.meta,
        "seed": config.seed,
        **report.metrics(),
        "reference_source": "computed" if reference is None else f"read from {cache}",
    }
    write_metrics(out, metrics)
    if cache is not None and reference is None:  # after metrics.json: the audit is kept whatever happens here
        try:
            save_reference(
                cache, result=report.reference, accuracy=report.details["reference_accuracy"], identity=identity
            )
            console.log(f"audit: reference written to {cache}")
        except OSError as exc:
            console.print(f"[yellow]warning:[/] could not write the reference cache {cache}: {exc}")
    print_table(
        "fedcond audit",
        [
            {
                "model": name,
                "nn match": f"{100 * report.recoverability.nn_match_rate:.1f}%" if name == "synthetic" else "-",
                "MIA AUC": f"{result.strongest.auc:.3f} ({result.strongest.attack})",
                "TPR@1%FPR": f"{100 * result.strongest.tpr_at_1pct_fpr:.1f}%",
                "TPR@0.1%FPR": f"{100 * result.strongest.tpr_at_01pct_fpr:.1f}%",
            }
            for name, result in (("synthetic", report.target), ("real (reference)", report.reference))
        ],
    )
    colour = "red" if report.verdict == LEAKS else "green"
    console.print(f"verdict: [{colour}]{report.verdict}[/]")
    for reason in report.reasons:
        console.print(f"  - {reason}")
    console.print(f"wrote {out}/metrics.json, nearest_neighbours.png, roc.png")
    return 0
