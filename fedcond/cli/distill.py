"""``fedcond distill`` and ``fedcond coreset``: condense one dataset and evaluate the result.

``fedcond distill --method NAME`` runs any registered condenser (:mod:`fedcond.distill.condenser`);
``fedcond coreset`` is the same command with the coreset methods and their flags only. A flag (or
config key) that sets something the chosen method does not read is refused by name instead of
being ignored.

Settings come, in increasing priority, from ``--config FILE`` (a ``[distill]`` table of
:class:`~fedcond.config.DistillConfig` keys and an ``[eval]`` table of
:class:`~fedcond.config.EvalConfig` keys), the flags, and ``--set distill.KEY=VALUE`` or
``--set eval.KEY=VALUE`` pairs. The configs are built, and so checked, before any data is read.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedcond.cli.common import (
    RUN_OPTIONS,
    CommandError,
    ProgressView,
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
from fedcond.config import DistillConfig, DPConfig, EvalConfig, choices_of, flatten_config, parse_config
from fedcond.data.registry import DatasetSplits
from fedcond.devices import resolve_device
from fedcond.distill.augment import LAYOUTS
from fedcond.distill.condenser import (
    ShortClassError,
    UnsupportedOptionError,
    accepts_option,
    condenser_class,
    get_condenser,
    list_condensers,
    refused_config_fields,
)
from fedcond.distill.dm import INITS
from fedcond.distill.evaluate import EvalProgress, evaluate_synthetic
from fedcond.distill.formation import check_factor
from fedcond.distill.matching import MATCHINGS
from fedcond.distill.synthetic import SyntheticSet
from fedcond.models import available_models
from fedcond.plots import save_image_grid

if TYPE_CHECKING:
    from fedcond.privacy.private_condensation import PrivateCondensation

__all__ = ["register"]

#: the defaults the flags' help shows: a flag left out (``None``) keeps the file's value or this default
_DISTILL = DistillConfig()
_EVAL = EvalConfig()


@dataclass(frozen=True)
class _CommandConfig:
    """The settings of one ``fedcond distill`` run: the ``[distill]`` and ``[eval]`` tables."""

    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


#: DP flags that only mean something with ``--dp-epsilon``, and their values when it is given
_DP_DEFAULTS: dict[str, Any] = {"dp_delta": 1e-5, "dp_clip": 0.6, "dp_accountant": "rdp", "dp_noise_seed": None}

#: flags that are no config keys: ``--set`` or the file giving one is refused, naming the flag
_RUN_OPTIONS: dict[str, str] = {
    **RUN_OPTIONS,
    "resume": "--resume",
    "method": "--method",
    "dp.epsilon": "--dp-epsilon",
    "dp.delta": "--dp-delta",
    "dp.clip_norm": "--dp-clip",
    "dp.accountant": "--dp-accountant",
    "dp.noise_seed": "--dp-noise-seed",
}

#: ``distill`` flags (argparse dests) that set a ``DistillConfig`` field, and that field: a method
#: whose ``config_fields`` leaves the field out refuses the flag when it is given
_FLAG_FIELDS: dict[str, str] = {
    "iterations": "iterations",
    "init": "init",
    "batch_real": "batch_real",
    "lr_img": "lr_img",
    "matching": "matching",
    "mmd_weight": "mmd_weight",
    "factor": "factor",
    "no_dsa": "dsa",
    "dsa_layout": "augment",
    "no_bf16": "mixed_precision",
    "compile": "compile",
    "checkpoint_every": "checkpoint_every",
    "resume": "checkpoint_every",
    "time_budget": "time_budget",
    "queue_size": "queue_size",
    "queue_lifetime": "queue_lifetime",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``distill`` and ``coreset`` subcommands and their flags to ``subparsers``."""
    distill = subparsers.add_parser(
        "distill", help="condense a dataset (distribution matching or any registered method)"
    )
    distill.add_argument(
        "--method",
        default="dm",
        help=f"condensation method, any registered condenser ({', '.join(list_condensers())}; default dm)",
    )
    _add_budget_arguments(distill)
    distill.add_argument(
        "--iterations", type=int, default=None, help=f"DM iterations (default {_DISTILL.iterations})"
    )
    distill.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop the optimisation loop after the iteration during which SECONDS are spent and keep its set "
        "(metrics.json: iterations run, stopped_by_time_budget; under DP, the iterations run are accounted)",
    )
    distill.add_argument(
        "--init",
        choices=INITS,
        default=None,
        help="synthetic init (herding: the herding coreset; kmeans: per-class k-means centroids, "
        f"with --iterations 0 the centroid baseline; default {_DISTILL.init})",
    )
    distill.add_argument(
        "--batch-real",
        type=int,
        default=None,
        help=f"real images per class and iteration (default {_DISTILL.batch_real})",
    )
    distill.add_argument(
        "--lr-img", type=float, default=None, help=f"SGD learning rate on pixels (default {_DISTILL.lr_img})"
    )
    distill.add_argument(
        "--matching",
        choices=MATCHINGS,
        default=None,
        help="mean: class-mean embeddings (DM paper); mmd: plus a Gaussian-kernel MMD per class "
        f"(measured better at ipc 10, worse at ipc 1; default {_DISTILL.matching})",
    )
    distill.add_argument(
        "--mmd-weight",
        type=float,
        default=None,
        help=f"weight of the MMD term (--matching mmd; default {_DISTILL.mmd_weight})",
    )
    distill.add_argument(
        "--factor",
        type=int,
        default=None,
        help="multi-formation (IDC): each stored image holds factor x factor downsampled tiles that "
        f"train as factor^2 images at the same storage (default {_DISTILL.factor}: plain DM; with --iterations 0 "
        "and --init real: downsampled random real images)",
    )
    distill.add_argument(
        "--queue-size",
        type=int,
        default=None,
        help="IDM: match with a queue of N partly trained embedders, each trained one step on real data when "
        f"drawn (default {_DISTILL.queue_size}: a fresh random network every iteration, the DM paper; not with DP)",
    )
    distill.add_argument(
        "--queue-lifetime",
        type=int,
        default=None,
        help=f"IDM: training steps before a queued embedder is replaced (default {_DISTILL.queue_lifetime})",
    )
    distill.add_argument("--no-dsa", action="store_true", help="disable siamese augmentation")
    distill.add_argument(
        "--dsa-layout",
        choices=LAYOUTS,
        default=None,
        help="one DSA parameter set per class shared by its real and synthetic images (class: the "
        "reference code's Siamese mode; always used under DP) or one per image (sample; "
        f"default {_DISTILL.augment.layout})",
    )
    distill.add_argument("--no-bf16", action="store_true", help="disable bf16 autocast")
    distill.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile the real-side forward (auto, the default: distill.compile from --config or --set, "
        "else on from 300 iterations without an embedder queue)",
    )
    distill.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help=f"checkpoint period in iterations (0: off; default {_DISTILL.checkpoint_every})",
    )
    distill.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    distill.add_argument("--dp-epsilon", type=float, default=None, help="differentially private DM: target epsilon")
    distill.add_argument(
        "--dp-delta", type=float, default=None, help=f"DP delta (default {_DP_DEFAULTS['dp_delta']:g})"
    )
    distill.add_argument(
        "--dp-clip",
        type=float,
        default=None,
        help="per-sample clipping bound on the sqrt(D)-scaled embedding (default "
        f"{_DP_DEFAULTS['dp_clip']}: typical norms are 0.5-0.55)",
    )
    distill.add_argument(
        "--dp-accountant",
        choices=choices_of(DPConfig, "accountant"),
        default=None,
        help="privacy accountant (default rdp)",
    )
    distill.add_argument(
        "--dp-noise-seed",
        type=int,
        default=None,
        help="seed the DP noise and Poisson sampling (reproducible research runs only: the guarantee then "
        "holds only while this value stays secret; default: a fresh secret seed from the OS)",
    )
    add_config_arguments(
        distill,
        config_help="TOML file: DistillConfig keys in a [distill] table ([distill.augment] for DSA), "
        "evaluation keys (runs, epochs, lr, momentum, weight_decay, batch_size, dsa, model) in an [eval] "
        "table; flags override it",
        set_help="override a file or flag value by its dotted key, distill.KEY or eval.KEY, e.g. "
        "distill.momentum=0.9 or eval.lr=0.02 (repeatable)",
    )
    # None = "not given": the config file's distill.seed then stands (the flag overrides the file)
    add_common_arguments(distill, default_out="runs/distill", from_config=("seed",))
    distill.set_defaults(run=run_distill)

    coreset = subparsers.add_parser(
        "coreset", help="random or herding coreset at the same budget (fedcond distill --method random|herding)"
    )
    coreset.add_argument("--method", choices=("random", "herding"), default="random")
    _add_budget_arguments(coreset)
    add_common_arguments(coreset, default_out="runs/coreset")
    # the same command as distill: distill's method flags at their defaults, none of them given
    distill_only = {name: distill.get_default(name) for name in (*_FLAG_FIELDS, *_DP_DEFAULTS, "dp_epsilon")}
    flag_defaults = {name: distill_only[name] for name in _FLAG_FIELDS}
    coreset.set_defaults(run=run_distill, flag_defaults=flag_defaults, config=None, overrides=None, **distill_only)
    distill.set_defaults(flag_defaults={name: distill.get_default(name) for name in _FLAG_FIELDS})


def _check_method(args: argparse.Namespace, keys: Collection[str]) -> type:
    """The chosen condenser's class; refuse an unknown name, and the flags and ``distill.*`` config
    ``keys`` it cannot honour, by name."""
    try:
        cls = condenser_class(args.method)
    except ValueError as exc:
        raise CommandError(f"--method: {exc}") from exc
    given = {name for name, default in args.flag_defaults.items() if getattr(args, name) != default}
    flagged = {_FLAG_FIELDS[name] for name in given}
    set_fields = {key.split(".")[1] for key in keys if key.startswith("distill.")}
    refused = set(refused_config_fields(args.method, flagged | set_fields))
    flags = sorted("--" + name.replace("_", "-") for name in given if _FLAG_FIELDS[name] in refused)
    flags += [f"distill.{name}" for name in sorted(refused - flagged)]
    if args.dp_epsilon is not None and not accepts_option(args.method, "real_statistics"):
        flags.append("--dp-epsilon")
    checkpoints = args.resume or "checkpoint_every" in set_fields
    if checkpoints and "checkpoint_path" not in inspect.signature(cls.condense).parameters:
        flags += [flag for flag in ("--checkpoint-every", "--resume") if flag not in flags]
    if flags:
        reads = getattr(cls, "config_fields", None)
        what = f" (it reads {', '.join(sorted(reads))})" if reads is not None else ""
        raise CommandError(f"--method {args.method} cannot honour {', '.join(flags)}{what}")
    return cls


def _check_dp_flags(args: argparse.Namespace) -> None:
    """Refuse DP flags without ``--dp-epsilon`` (the run would not be private), fill their defaults."""
    given = [name for name in _DP_DEFAULTS if getattr(args, name) is not None]
    if args.dp_epsilon is None:
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise CommandError(
                f"{flags} without --dp-epsilon: the run would not be differentially private; "
                "add --dp-epsilon E (and --dp-delta D) or drop them"
            )
        return
    for name, default in _DP_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def _add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--ipc", type=int, default=None, help=f"images per class (default {_DISTILL.ipc})")
    parser.add_argument(
        "--eval-runs", type=int, default=None, help=f"networks trained for evaluation (default {_EVAL.runs}; 0 skips)"
    )
    parser.add_argument(
        "--eval-epochs", type=int, default=None, help=f"epochs per evaluation network (default {_EVAL.epochs})"
    )
    parser.add_argument(
        "--eval-model", default=None, help=f"evaluation network (convnet or mlp; default {_EVAL.model})"
    )
    parser.add_argument(
        "--eval-no-dsa",
        action="store_true",
        help="train the evaluation networks without siamese augmentation (the protocol trains with it)",
    )


def _command_config(args: argparse.Namespace) -> tuple[_CommandConfig, dict[str, Any]]:
    """The run's checked configs, from ``--config``, the flags and ``--set``, and the values they came from."""
    flags = {
        "distill.ipc": args.ipc,
        "distill.iterations": args.iterations,
        "distill.init": args.init,
        "distill.batch_real": args.batch_real,
        "distill.lr_img": args.lr_img,
        "distill.matching": args.matching,
        "distill.mmd_weight": args.mmd_weight,
        "distill.factor": args.factor,
        "distill.queue_size": args.queue_size,
        "distill.queue_lifetime": args.queue_lifetime,
        "distill.checkpoint_every": args.checkpoint_every,
        "distill.time_budget": args.time_budget,
        "distill.dsa": False if args.no_dsa else None,
        "distill.augment.layout": args.dsa_layout,
        "distill.mixed_precision": False if args.no_bf16 else None,
        "distill.compile": {"on": True, "off": False}.get(args.compile),  # auto: decided below
        "distill.seed": args.seed,
        "eval.runs": args.eval_runs,
        "eval.epochs": args.eval_epochs,
        "eval.model": args.eval_model,
        "eval.dsa": False if args.eval_no_dsa else None,
    }
    values = config_values(file=args.config, flags=flags, overrides=args.overrides, run_options=_RUN_OPTIONS)
    config = parse_config(_CommandConfig, values)
    if "distill.compile" not in values:  # auto: worth its compile time from a few hundred iterations
        distill = config.distill
        compiled = distill.iterations >= 300 and distill.queue_size == 0
        config = dataclasses.replace(config, distill=dataclasses.replace(distill, compile=compiled))
    return config, values


def _load(args: argparse.Namespace, eval_config: EvalConfig) -> DatasetSplits:
    """Check what the configs cannot check themselves before the (long) work starts, then load the data."""
    if eval_config.runs > 0 and eval_config.model not in available_models():  # not only after DM has run
        choices = ", ".join(available_models())
        raise CommandError(f"--eval-model: unknown model {eval_config.model!r}; choose one of {choices}")
    return load_data(args)


def _refuse_small_classes(splits: DatasetSplits, needed: int, hint: str) -> None:
    small = [c for c, n in enumerate(splits.train.class_counts().tolist()) if 0 < n < needed]
    if small:
        raise CommandError(f"classes {small} hold fewer than {needed} images; {hint}")


def _evaluate(
    args: argparse.Namespace,
    eval_config: EvalConfig,
    synthetic: SyntheticSet,
    splits: DatasetSplits,
    metrics: dict[str, Any],
) -> None:
    metrics["eval_runs"] = eval_config.runs
    metrics["eval_epochs"] = eval_config.epochs
    metrics["eval_dsa"] = eval_config.dsa
    if eval_config.runs == 0:
        metrics["test_accuracy_mean"] = None
        metrics["test_accuracy_std"] = None
        metrics["test_accuracies"] = []
        return
    console.log(f"evaluating: {eval_config.runs} x {eval_config.model}, {eval_config.epochs} epochs each")
    with ProgressView("evaluation", total=eval_config.runs * eval_config.epochs) as view:
        result = evaluate_synthetic(
            synthetic,
            splits.test,
            eval_config,
            seed=metrics["seed"],
            device=resolve_device(args.device),
            progress=lambda step: _show_eval_progress(view, step, test_images=len(splits.test)),
        )
    metrics["test_accuracy_mean"] = result.mean
    metrics["test_accuracy_std"] = result.std
    metrics["test_accuracies"] = result.accuracies


def _show_eval_progress(view: ProgressView, step: EvalProgress, *, test_images: int) -> None:
    """Draw one step of the evaluation protocol: a line in a log at every tenth of a network's
    epochs, and one when its testing starts (on CIFAR-10's 10,000 images it takes a while)."""
    network = f"eval network {step.run}/{step.runs}"
    if step.accuracy is not None:
        view.note(f"{network}: {100 * step.accuracy:.2f}% test accuracy")
        return
    every = max(1, step.epochs // 10)
    view.update(
        (step.run - 1) * step.epochs + step.epoch,
        label=f"{network}, epoch {step.epoch}/{step.epochs}",
        line=step.epoch % every == 0 or step.epoch == step.epochs,
    )
    if step.epoch == step.epochs:
        view.note(f"{network}: trained, testing on {test_images} images")


def _finish(
    args: argparse.Namespace,
    eval_config: EvalConfig,
    synthetic: SyntheticSet,
    splits: DatasetSplits,
    metrics: dict[str, Any],
) -> None:
    path = synthetic.save(args.out / "synthetic.npz")
    save_image_grid(
        synthetic.images,
        synthetic.labels,
        splits.spec,
        args.out / "synthetic.png",
        title=f"{metrics.get('method', 'dm')} {splits.spec.name} ipc={synthetic.meta['ipc']}"
        + (f" factor {synthetic.factor}" if synthetic.factor > 1 else "")
        + (f" ({metrics['init']} init, {metrics['iterations']} it)" if "init" in metrics else ""),
    )
    metrics["synthetic_path"] = str(path)
    # metrics.json describes the set just written before the evaluation starts, so a failed or
    # interrupted evaluation never leaves an earlier run's metrics beside this run's set
    write_metrics(args.out, {**metrics, "test_accuracy_mean": None, "test_accuracy_std": None, "evaluation": "pending"})
    _evaluate(args, eval_config, synthetic, splits, metrics)
    write_metrics(args.out, metrics)
    acc = metrics["test_accuracy_mean"]
    print_table(
        "fedcond " + args.command,
        [
            {
                "dataset": metrics["dataset"],
                "method": metrics["method"],
                "ipc": metrics["ipc"],
                "images": len(synthetic)
                if synthetic.factor == 1
                else f"{len(synthetic)} ({len(synthetic) * synthetic.factor**2} tiles)",
                "test acc": (
                    "skipped" if acc is None else f"{100 * acc:.2f} ± {100 * metrics['test_accuracy_std']:.2f}%"
                ),
                **({"epsilon": round(metrics["epsilon"], 3)} if "epsilon" in metrics else {}),
            }
        ],
    )
    console.print(f"wrote {args.out}/metrics.json, synthetic.png, {path.name}")


def run_distill(args: argparse.Namespace) -> int:
    """Run ``fedcond distill`` (and ``fedcond coreset``): condense with ``--method``, evaluate, write
    the set, ``synthetic.png`` and ``metrics.json``."""
    _check_dp_flags(args)
    settings, values = _command_config(args)  # bad settings fail here, before any data is read
    dp = _dp_config(args)
    config, eval_config = settings.distill, settings.eval
    cls = _check_method(args, values)
    if dp is not None and values.get("distill.init") not in (None, "noise"):  # refused, not overridden
        raise CommandError(
            f"--init {values['distill.init']} with --dp-epsilon: a start made from real images is published "
            "with the set and no noise protects it; DP condenses from noise (leave --init out)"
        )
    dm = args.method == "dm"
    out = prepare_run_folder(args.out, overwrite=args.overwrite, resume=args.resume)
    splits = _load(args, eval_config)
    try:
        check_factor(config.factor, image_size=splits.spec.image_size)
    except ValueError as exc:
        raise CommandError(
            f"--factor must be a positive integer dividing the image size {splits.spec.image_size}: {exc}"
        ) from exc
    if args.resume and not config.checkpoint_every:
        raise CommandError("--resume needs --checkpoint-every N: checkpoints are written (and read) only with it")
    if args.resume and not (out / "checkpoint.npz").exists():
        if (out / "metrics.json").exists():  # a finished run, or another command's: nothing to continue
            raise CommandError(
                f"--resume: {out} holds a run's metrics.json and no checkpoint.npz to continue; "
                "choose another --out, or --overwrite to replace it"
            )
        console.print(f"[yellow]note:[/] --resume: no checkpoint in {out} yet, starting from iteration 0")
    if args.dp_epsilon is not None and config.init != "noise":
        config = parse_config(DistillConfig, {**flatten_config(config), "init": "noise"})
    private = _private_condensation(dp, config, splits)
    if not dm:  # the small-class policy of every selection: ipc real images per class present
        _refuse_small_classes(splits, config.ipc, "lower --ipc")
    elif config.init != "noise":
        needed = config.ipc * config.factor**2
        hint = f"{config.init} init needs ipc x factor^2 per class (lower --ipc or --factor, or use --init noise)"
        _refuse_small_classes(splits, needed, hint)
    options: dict[str, Any] = {"real_statistics": private.statistics} if private is not None else {}
    if accepts_option(args.method, "progress"):
        options["progress"] = True
    try:
        engine = get_condenser(args.method, config, device=resolve_device(args.device), **options)
    except ValueError as exc:  # settings the method refuses together (e.g. an embedder queue under DP)
        raise CommandError(f"--method {args.method}: {exc}") from exc
    condense_options: dict[str, Any] = {}
    if "checkpoint_path" in inspect.signature(cls.condense).parameters:
        condense_options = {
            "checkpoint_path": out / "checkpoint.npz" if config.checkpoint_every else None,
            "resume": args.resume,
        }
    start = time.perf_counter()
    try:
        if private is None:
            result = engine.condense(splits.train, **condense_options)
        else:
            result = private.condense(engine, splits.train, **condense_options)
    except (ShortClassError, UnsupportedOptionError) as exc:
        raise CommandError(f"--method {args.method}: {exc}") from exc
    elapsed = time.perf_counter() - start
    synthetic = result.synthetic
    metrics: dict[str, Any] = {
        "dataset": splits.spec.name,
        "method": args.method,
        "ipc": config.ipc,
        "iterations": result.iterations_run,
        # the start of an optimised set (the set's own record); null for a coreset, which has none
        "init": synthetic.meta.get("init"),
        "time_budget": config.time_budget,
        "stopped_by_time_budget": result.stopped_by_time_budget,
        "seed": config.seed,
        "device": str(getattr(engine, "device", resolve_device(args.device))),
        # a resumed run: the seconds of the earlier segments (from the checkpoint) are added;
        # iterations_per_second is this segment's throughput
        "distill_seconds": elapsed + result.earlier_seconds,
        "iterations_per_second": result.iterations_per_second,
        "final_loss": result.all_losses[-1] if result.all_losses else None,
        "loss_history": result.all_losses[:: max(1, len(result.all_losses) // 200)],
        "skipped_classes": result.skipped_classes,
    }
    if dm:
        metrics.update(
            {
                "init": config.init,
                "matching": config.matching,
                "factor": config.factor,
                "training_images": len(synthetic) * config.factor**2,
                "dsa_layout": synthetic.meta.get("dsa_layout"),
                "resumed_from_iteration": result.resumed_from,
            }
        )
    if private is not None:  # the spent budget and the plan, as the set's metadata records them
        from fedcond.privacy.private_condensation import DP_META_KEYS

        metrics.update({key: synthetic.meta[key] for key in DP_META_KEYS if key in synthetic.meta})
    metrics["config"] = flatten_config(_CommandConfig(distill=config, eval=eval_config))
    _finish(args, eval_config, synthetic, splits, metrics)
    return 0


def _dp_config(args: argparse.Namespace) -> DPConfig | None:
    """The checked settings of the ``--dp-*`` flags, before any data is read; ``None`` without ``--dp-epsilon``."""
    if args.dp_epsilon is None:
        return None
    if args.dp_epsilon <= 0:
        raise CommandError(
            f"--dp-epsilon must be > 0, got {args.dp_epsilon:g}; a run without DP leaves --dp-epsilon out"
        )
    return parse_config(
        DPConfig,
        {
            "epsilon": args.dp_epsilon,
            "delta": args.dp_delta,
            "clip_norm": args.dp_clip,
            "accountant": args.dp_accountant,
            "noise_seed": args.dp_noise_seed,
        },
    )


def _private_condensation(
    dp: DPConfig | None, config: DistillConfig, splits: DatasetSplits
) -> PrivateCondensation | None:
    """The DP run of the ``--dp-*`` flags' settings ``dp``, or ``None`` without them."""
    if dp is None:
        return None
    # privacy (Opacus) is optional at import time
    from fedcond.privacy.private_condensation import PrivateCondensation

    return PrivateCondensation(dp, distill=config, class_counts=splits.train.class_counts())
