"""``fedcond continual``: one class-incremental run with a chosen replay kind."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from fedcond.cli.common import (
    RUN_OPTIONS,
    CommandError,
    add_common_arguments,
    add_config_arguments,
    command_line_keys,
    config_values,
    console,
    prepare_run_folder,
    print_table,
    refuse_files_of_bundled_data,
    refuse_ignored_keys,
    write_metrics,
)
from fedcond.config import ContinualConfig, choices_of, flatten_config, parse_config

__all__ = ["register"]

_BENCHMARKS = choices_of(ContinualConfig, "benchmark")
_REPLAYS = choices_of(ContinualConfig, "replay")
#: flags that are no config keys: ``--set`` or the file giving one is refused, naming the flag
_RUN_OPTIONS = {**RUN_OPTIONS, "data_dir": "--data-dir", "download": "--download"}
#: flag (argparse dest) -> the config key it sets
_FLAG_KEYS = {
    "benchmark": "benchmark",
    "replay": "replay",
    "memory_per_class": "memory_per_class",
    "max_memory": "max_memory",
    "gdumb_epochs": "gdumb_epochs",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "iterations": "distill.iterations",
    "batch_real": "distill.batch_real",
    "train_per_class": "train_per_class",
    "test_per_class": "test_per_class",
    "gdumb": "gdumb",
    "augment_memory": "augment_memory",
    "seed": "seed",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``continual`` subcommand and its flags to ``subparsers``."""
    parser = subparsers.add_parser(
        "continual",
        help="class-incremental learning with none/random/herding/distilled replay (Avalanche)",
        description=(
            "Class-incremental split benchmark (5 experiences x 2 classes, seeded class order). "
            "Every replay kind holds the same number of images; --gdumb trains a fresh network on "
            "the memory alone after each experience (the DM paper's protocol)."
        ),
    )
    add_config_arguments(
        parser,
        config_help="TOML file with [continual] settings ([continual.distill] for DM's)",
        set_help="override any continual key, e.g. distill.lr_img=0.5 (repeatable)",
    )
    parser.add_argument("--benchmark", choices=_BENCHMARKS, default=None, help="default split-digits (bundled)")
    parser.add_argument("--replay", choices=_REPLAYS, default=None, help="default distilled")
    parser.add_argument("--memory-per-class", type=int, default=None, help="replay images per class (default 10)")
    parser.add_argument(
        "--max-memory", type=int, default=None, help="fixed total budget shared by the classes seen so far"
    )
    parser.add_argument(
        "--augment-memory", action="store_true", help="replay memory images through DSA (any replay kind)"
    )
    parser.add_argument("--gdumb", action="store_true", help="train from scratch on the memory after each experience")
    parser.add_argument("--gdumb-epochs", type=int, default=None, help="epochs of each GDumb training (default 100)")
    parser.add_argument("--epochs", type=int, default=None, help="Naive epochs per experience (default 5)")
    parser.add_argument("--batch-size", type=int, default=None, help="minibatch (and memory minibatch) size")
    parser.add_argument("--lr", type=float, default=None, help="SGD learning rate (default 0.01)")
    parser.add_argument("--iterations", type=int, default=None, help="DM iterations per experience (default 200)")
    parser.add_argument("--batch-real", type=int, default=None, help="DM real images per class and iteration")
    parser.add_argument("--train-per-class", type=int, default=None, help="subsample the training split (seeded)")
    parser.add_argument("--test-per-class", type=int, default=None, help="subsample the test split (seeded)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="torchvision-layout root (MNIST, Fashion-MNIST); for split-cifar10 the CIFAR-10 root, holding "
        "cifar-10-batches-py/ or the image folders train/ and test/ (one sub-folder per class)",
    )
    parser.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    # None = "not given": a config file's seed then stands (the flag overrides the file)
    add_common_arguments(parser, default_out="runs/continual", from_config=("seed",))
    parser.set_defaults(run=run_continual_command)


def config_from(args: argparse.Namespace) -> ContinualConfig:
    """The typed config: TOML file, then flags, then ``--set`` overrides.

    A flag or ``--set`` key that the chosen mode does not read (``--gdumb-epochs`` without
    ``--gdumb``, ``--iterations`` without distilled replay, ``distill.ipc`` ever) is refused with
    the reason; a config file may hold keys of other modes, since a flag may switch the mode.
    """
    flags = {key: getattr(args, flag) for flag, key in _FLAG_KEYS.items()}
    flags.update({key: True if flags[key] else None for key in ("gdumb", "augment_memory")})  # store_true flags
    values = config_values(
        file=args.config, section="continual", flags=flags, overrides=args.overrides, run_options=_RUN_OPTIONS
    )
    if "distill.seed" in values:
        raise CommandError("distill.seed follows the run's seed in continual runs: use --seed (or seed = N)")
    config = parse_config(ContinualConfig, values)
    flag_names = {key: "--" + flag.replace("_", "-") for flag, key in _FLAG_KEYS.items()}
    given = command_line_keys(flags, flag_names, args.overrides)
    refuse_ignored_keys(config.ignored_keys(given), given)
    from fedcond.continual.benchmarks import BENCHMARKS

    asked = {"data_dir": f"--data-dir {args.data_dir}", "download": "--download"}
    dataset = BENCHMARKS[config.benchmark]
    refuse_files_of_bundled_data(dataset, {key: flag for key, flag in asked.items() if getattr(args, key)})
    return config


def run_continual_command(args: argparse.Namespace) -> int:
    """Run ``fedcond continual``: write ``metrics.json`` and ``accuracy_matrix.png``; return the exit code."""
    config = config_from(args)  # bad settings fail here, before the run folder and the training libraries
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedcond.continual.benchmarks import BENCHMARKS
    from fedcond.continual.figures import save_accuracy_matrix
    from fedcond.continual.runner import run_continual
    from fedcond.data.registry import get_spec

    out = prepare_run_folder(args.out, overwrite=args.overwrite)
    protocol = "gdumb" if config.gdumb else ("joint" if config.replay == "joint" else "naive")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"{config.benchmark} {config.replay} ({protocol})", total=config.num_experiences)

        def on_experience(i: int, total: int, row: list[float], memory: int) -> None:
            bar.update(task, completed=i + 1)
            seen = row[: i + 1]  # the experiences trained so far; the rest are classes never shown
            console.log(
                f"experience {i + 1}/{total}: acc on experiences seen {100 * sum(seen) / len(seen):.1f}%, "
                f"on the whole stream {100 * sum(row) / len(row):.1f}%, memory {memory} images"
            )

        result = run_continual(
            config,
            data_dir=args.data_dir,
            download=args.download,
            device=args.device,
            cache_dir=out / ".state" / "dm-cache",
            on_experience=on_experience,
        )
    spec = get_spec(BENCHMARKS[config.benchmark])  # class names for the figure and the table
    # the config the run used: DM's seed is the run's --seed (run_continual sets it)
    used = dataclasses.replace(config, distill=dataclasses.replace(config.distill, seed=config.seed))
    metrics = {**result.to_metrics(), "protocol": protocol, "config": flatten_config(used)}
    write_metrics(out, metrics)
    save_accuracy_matrix(
        result.accuracy_matrix,
        out / "accuracy_matrix.png",
        experience_classes=result.experience_classes,
        title=f"{config.benchmark} {config.replay} ({protocol}), {result.memory_images} images",
        row_labels=["joint"] if protocol == "joint" else None,
        class_names=spec.class_names,
    )
    forgetting = result.forgetting
    print_table(
        "fedcond continual",
        [
            {
                "benchmark": result.benchmark,
                "replay": result.replay,
                "mode": protocol,
                "images": result.memory_images,
                "final acc": f"{100 * result.final_average_accuracy:.1f}%",
                "forget": "n/a" if forgetting is None else f"{100 * forgetting:.1f}",
                "s": round(result.wall_seconds),
                "DM s": round(result.condense_seconds),
            }
        ],
    )
    print_table(
        "accuracy matrix (%): row = after experience i, column = test classes of experience j",
        [
            {
                "after": i,
                **{
                    ", ".join(spec.class_name(k) for k in c): f"{100 * a:.1f}"
                    for c, a in zip(result.experience_classes, row, strict=True)
                },
            }
            for i, row in enumerate(result.accuracy_matrix)
        ],
    )
    console.print(f"wrote {out}/metrics.json, accuracy_matrix.png")
    return 0
