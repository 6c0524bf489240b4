"""Helpers shared by the sub-commands: common flags, config values, run folders, metrics.json, tables."""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.table import Table

from fedcond.config import MAX_SEED, DataConfig, load_toml, parse_config
from fedcond.data.registry import DatasetSplits, available_datasets, load_dataset
from fedcond.metrics_file import write_metrics

__all__ = [
    "RUN_OPTIONS",
    "CommandError",
    "ProgressView",
    "add_common_arguments",
    "add_config_arguments",
    "add_data_arguments",
    "command_line_keys",
    "config_key",
    "config_values",
    "console",
    "data_config_from",
    "forget_run_folders",
    "load_data",
    "overrides_from",
    "prepare_run_folder",
    "print_table",
    "refuse_files_of_bundled_data",
    "refuse_ignored_keys",
    "remove_unused_run_folders",
    "whole_number",
    "write_metrics",
]


#: tables are the end of every command: when stderr is a file or pipe (CI logs, ``2> run.log``)
#: rich would wrap them at 80 columns, so they get 120 unless ``COLUMNS`` says otherwise
_PIPED_WIDTH = 120
console = Console(stderr=True)
if not console.is_terminal and not os.environ.get("COLUMNS"):
    console.width = _PIPED_WIDTH


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


def run_folder(value: str) -> Path:
    """``--out``: a folder path; an empty value (an unset shell variable) is refused, never the working folder."""
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty (an unset variable?); name the run folder, e.g. --out runs/demo")
    return Path(value)


def add_common_arguments(
    parser: argparse.ArgumentParser, *, default_out: str, from_config: Sequence[str] = ()
) -> None:
    """``--out``, ``--seed`` and ``--device``, present on every command.

    ``from_config`` names the flags (``"seed"``, ``"device"``) that default to ``None``, so that
    a config file's value stands unless the flag is given.
    """
    parser.add_argument("--out", type=run_folder, default=Path(default_out), help=f"run folder (default {default_out})")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (without it, a folder holding metrics.json is refused)",
    )
    parser.add_argument(
        "--seed",
        type=whole_number(0, MAX_SEED),
        default=None if "seed" in from_config else 0,
        help="seed for every random generator (default "
        + ("the config file's seed, else 0)" if "seed" in from_config else "0)"),
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=None if "device" in from_config else "auto",
        help="auto picks CUDA when present (default "
        + ("the config file's device, else auto)" if "device" in from_config else "auto)"),
    )


def add_data_arguments(
    parser: argparse.ArgumentParser, *, default: str | None = "digits", default_help: str | None = None
) -> None:
    """``--dataset``, ``--data-dir`` and ``--download`` (``default_help`` describes a ``None`` default)."""
    parser.add_argument(
        "--dataset",
        default=default,
        help=f"one of {', '.join(available_datasets())} "
        f"(default {default_help or f'{default}: bundled, no download'})",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="dataset root: torchvision's layout, or train/<class>/ and test/<class>/ image folders "
        "(imagefolder; cifar10 reads either)",
    )
    parser.add_argument(
        "--download", action="store_true", help="let torchvision download a missing dataset (off by default)"
    )


def data_config_from(args: argparse.Namespace) -> DataConfig:
    """The typed data config from the flags; ``--data-dir`` or ``--download`` for a bundled dataset is refused."""
    if args.dataset not in available_datasets():
        raise CommandError(f"unknown dataset {args.dataset!r}; choose one of {', '.join(available_datasets())}")
    given = {"data_dir": f"--data-dir {args.data_dir}", "download": "--download"}
    refuse_files_of_bundled_data(
        args.dataset, {key: flag for key, flag in given.items() if getattr(args, key) not in (None, False)}
    )
    return parse_config(
        DataConfig, {"dataset": args.dataset, "data_dir": args.data_dir, "download": args.download}
    )


class ProgressView:
    """Progress of one long step: a rich bar on a terminal, lasting lines in a log.

    On a terminal the bar is redrawn on every :meth:`update` and vanishes when the step ends;
    when stderr is a file or pipe (CI, ``2> run.log``) a bar would leave nothing, so the updates
    the caller marks with ``line=True`` are written as timed lines instead. :meth:`note` writes a
    lasting line in both cases (a network's accuracy, a summary).
    """

    def __init__(self, description: str, *, total: int) -> None:
        self._description = description
        self._total = max(1, int(total))
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> ProgressView:
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            self._progress = Progress(*columns, console=console, transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self._description, total=self._total)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, completed: int, *, label: str, line: bool = False) -> None:
        """Move to ``completed`` steps, described by ``label``; ``line`` writes it to a log too."""
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, description=label)
        elif line:
            console.log(label)

    def note(self, message: str) -> None:
        """A lasting line (above the bar on a terminal)."""
        console.log(message)


#: a step done within this many seconds writes no progress lines to a log, only its summary
QUIET_SECONDS = 2.0


def load_data(args: argparse.Namespace) -> DatasetSplits:
    """Load ``--dataset`` from ``--data-dir``, showing progress while image files decode.

    Datasets stored as arrays load in one step; an ImageFolder tree (``imagefolder``, CIFAR-10's
    JPEG folder) shows a bar on a terminal, writes a line at every tenth of its images to a log
    once reading has taken more than :data:`QUIET_SECONDS`, and ends with one line saying how
    many images it read and how long that took.
    """
    config = data_config_from(args)
    start = time.perf_counter()
    view: ProgressView | None = None
    tenths_shown = -1

    with ExitStack() as stack:

        def progress(done: int, total: int) -> None:
            nonlocal view, tenths_shown
            if view is None:
                view = stack.enter_context(ProgressView(f"reading {config.dataset} images", total=total))
            tenths = 10 * done // max(1, total)
            slow = time.perf_counter() - start > QUIET_SECONDS
            label = f"reading {config.dataset} images: {done}/{total}"
            view.update(done, label=label, line=slow and tenths > tenths_shown)
            tenths_shown = tenths

        splits = load_dataset(config, progress=progress)
    if view is not None:
        console.log(
            f"read {config.dataset} from {config.data_dir}: {len(splits.train)} train / {len(splits.test)} test "
            f"images in {time.perf_counter() - start:.1f} s"
        )
    return splits


#: files whose presence means a folder already holds a run (finished, or stopped with a checkpoint)
RUN_MARKERS = ("metrics.json", "checkpoint.npz")


def prepare_run_folder(out: Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Create the run folder and keep matplotlib, Flower and Ray state inside it.

    Parameters
    ----------
    out : Path
        The run folder (``--out``).
    overwrite : bool
        Replace a run already in ``out``. Without it a folder holding ``metrics.json`` or
        ``checkpoint.npz`` is refused, so that rerunning a command never silently replaces
        earlier results.
    resume : bool
        The command continues the run in ``out`` (``fedcond distill --resume``): its files are
        expected there.

    Raises
    ------
    CommandError
        ``out`` is a file, cannot be created or written, or holds a run and neither
        ``overwrite`` nor ``resume`` is set.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} exists and is not a folder")
    found = [name for name in RUN_MARKERS if (out / name).exists()]
    if found and not (overwrite or resume):
        raise CommandError(
            f"--out {out} already holds a run ({', '.join(found)}); pass --overwrite to replace it "
            "or choose another --out"
        )
    if not out.exists():
        top = out  # the outermost folder this call creates (mkdir makes the missing parents too)
        while not top.parent.exists():
            top = top.parent
        _CREATED_FOLDERS.append((top, out / ".state"))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a path under a regular file, a folder the user may not write in
        raise CommandError(f"--out {out}: cannot create the run folder ({exc.strerror or exc})") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise CommandError(f"--out {out}: the run folder is not writable by this user")
    state = (out / ".state").resolve()
    _set_state_variables(
        {
            "MPLCONFIGDIR": str(state / "matplotlib"),
            "FLWR_HOME": str(state / "flwr"),
            "RAY_TMPDIR": str(state / "ray"),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        }
    )
    return out


#: run folders :func:`prepare_run_folder` created in this process (see :func:`remove_unused_run_folders`)
_CREATED_FOLDERS: list[tuple[Path, Path]] = []


def remove_unused_run_folders() -> None:
    """Remove the run folders this process created that hold nothing but run state.

    Called when a command fails on bad input, so that a typo does not leave an empty run folder
    behind. A folder that existed before, or that holds any file outside ``.state``, is kept.
    """
    while _CREATED_FOLDERS:
        top, state = _CREATED_FOLDERS.pop()
        try:
            if top.is_dir() and all(p.is_dir() or state in p.parents for p in top.rglob("*")):
                shutil.rmtree(top)
        except OSError:
            continue  # best effort: never turn a clear error into a second one


def forget_run_folders() -> None:
    """Stop tracking the run folders created so far (the command is over)."""
    _CREATED_FOLDERS.clear()


#: the values :func:`prepare_run_folder` put in ``os.environ``, so a later command in the same
#: process moves them to its own run folder while a value the user set is never touched
_OWN_ENVIRONMENT: dict[str, str] = {}


def _set_state_variables(values: Mapping[str, str]) -> None:
    for key, value in values.items():
        current = os.environ.get(key)
        if current is None or current == _OWN_ENVIRONMENT.get(key):
            os.environ[key] = value
            _OWN_ENVIRONMENT[key] = value


def print_table(title: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """A rich summary table of ``rows`` (dicts with the same keys) on stderr."""
    if not rows:
        return
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(str(key))
    for row in rows:
        table.add_row(*(_format(v) for v in row.values()))
    console.print(table)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def overrides_from(pairs: Sequence[str] | None) -> dict[str, str]:
    """Parse ``--set key=value`` pairs."""
    out: dict[str, str] = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise CommandError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        if not key.strip():
            raise CommandError(f"--set {pair!r} has no key before '='; write KEY=VALUE, e.g. --set distill.ipc=1")
        out[key.strip()] = value.strip()
    return out


def add_config_arguments(parser: argparse.ArgumentParser, *, config_help: str, set_help: str) -> None:
    """``--config FILE`` (dest ``config``) and the repeatable ``--set KEY=VALUE`` (dest ``overrides``).

    Both are read by :func:`config_values`; ``None`` means not given.
    """
    parser.add_argument("--config", type=Path, default=None, metavar="FILE", help=config_help)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE", help=set_help
    )


def command_line_keys(
    flags: Mapping[str, Any], flag_names: Mapping[str, str], overrides: Sequence[str] | None
) -> dict[str, str]:
    """The config keys the command line sets, each as the user wrote it.

    Parameters
    ----------
    flags : Mapping[str, Any]
        Config key -> the value of the flag that sets it (``None``: not given), as for
        :func:`config_values`.
    flag_names : Mapping[str, str]
        Config key -> that flag (``"alpha"`` -> ``"--alpha"``).
    overrides : Sequence[str] | None
        The ``--set key=value`` pairs; one wins over a flag for the same key.

    Returns
    -------
    dict[str, str]
        Key (underscore spelling) -> ``--alpha 0.5`` or ``--set alpha=0.5``.
    """
    given = {
        config_key(key): f"{flag_names[key]} {value}" if not isinstance(value, bool) else flag_names[key]
        for key, value in flags.items()
        if value is not None and key in flag_names
    }
    given.update({config_key(key): f"--set {key}={value}" for key, value in overrides_from(overrides).items()})
    return given


def refuse_ignored_keys(ignored: Mapping[str, str], given: Mapping[str, str]) -> None:
    """Refuse the settings the command line gave (``given``, from :func:`command_line_keys`) that
    the run would not read (``ignored``: key -> reason, from the config's ``ignored_keys``).

    Raises
    ------
    CommandError
        Naming each such flag or ``--set`` pair and why it has no effect.
    """
    if ignored:
        problems = [f"{given[key]} has no effect: {reason}" for key, reason in ignored.items()]
        raise CommandError("; ".join(problems) + "; drop it")


def refuse_files_of_bundled_data(dataset: str, given: Mapping[str, str]) -> None:
    """Refuse ``--data-dir`` and ``--download`` (``given``: key -> as written) for a dataset that
    ships with its library and reads no folder.

    Raises
    ------
    CommandError
        Naming the flag and the dataset.
    """
    from fedcond.data.registry import BUNDLED_DATASETS

    if dataset not in BUNDLED_DATASETS:
        return
    for key, what in (("data_dir", "reads no data folder"), ("download", "downloads nothing")):
        if key in given:
            raise CommandError(
                f"{given[key]}: dataset {dataset} is bundled with scikit-learn and {what}; drop it"
            )


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number in ``[low, high]``, else the parser's error naming the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must lie in [{low}, {high}], got {value}")
        return value

    return parse


def config_key(key: str) -> str:
    """``distill.batch-real`` -> ``distill.batch_real``: one spelling, so a later source replaces it."""
    return ".".join(part.strip().replace("-", "_") for part in str(key).split("."))


#: the options of :func:`add_common_arguments` that steer one run of a command (where it writes,
#: whether it replaces a run, which device it uses): command-line flags, no config keys; key -> flag
RUN_OPTIONS: dict[str, str] = {"out": "--out", "overwrite": "--overwrite", "device": "--device"}


def _refuse_run_options(keys: Sequence[str], run_options: Mapping[str, str], *, source: str) -> None:
    for key in keys:
        flag = run_options.get(config_key(key))
        if flag is not None:
            raise CommandError(
                f"{source}: {config_key(key)!r} is not a config key but a command-line option: use the flag {flag}"
            )


def config_values(
    *,
    file: Path | None,
    flags: Mapping[str, Any],
    overrides: Sequence[str] | None,
    section: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    run_options: Mapping[str, str] = RUN_OPTIONS,
) -> dict[str, Any]:
    """The flat, dotted config values of a command, from its three sources (a later one wins).

    Parameters
    ----------
    file : Path | None
        The ``--config`` TOML file, read first; ``None`` uses ``defaults`` instead.
    flags : Mapping[str, Any]
        Config key -> the value of the flag that sets it; ``None`` means the flag was not given,
        so the file's value (or the config's default) stands.
    overrides : Sequence[str] | None
        The ``--set key=value`` pairs, applied last.
    section : str | None
        A table the command's keys may live in (``[continual]``): when the file has it, its keys
        are used without the prefix, and keys beside it are refused rather than ignored.
    defaults : Mapping[str, Any] | None
        The values standing in for a missing ``file`` (a command's built-in demo).
    run_options : Mapping[str, str]
        Keys that are the command's run options, and the flag that sets each
        (:data:`RUN_OPTIONS` by default): the file or ``--set`` giving one is refused, naming
        the flag, instead of being ignored or overridden by it.

    Returns
    -------
    dict[str, Any]
        Dotted keys (underscore spelling) -> values, for :func:`fedcond.config.parse_config`.

    Raises
    ------
    CommandError
        For keys beside the ``section`` table, a run option given as a key, or a ``--set`` pair
        without ``=`` or without a key.
    ConfigError
        When the file is missing or not valid TOML.
    """
    values: dict[str, Any] = {}
    table = load_toml(file) if file is not None else dict(defaults or {})
    if file is not None and section is not None:
        prefix = f"{section}."
        scoped = {k.removeprefix(prefix): v for k, v in table.items() if k.startswith(prefix)}
        outside = sorted(k for k in table if not k.startswith(prefix))
        if scoped and outside:
            raise CommandError(
                f"{file}: keys outside the [{section}] table would be ignored: {', '.join(outside[:6])} "
                f"(move them into the [{section}] table)"
            )
        table = scoped or table
    pairs = overrides_from(overrides)
    if file is not None:
        _refuse_run_options(list(table), run_options, source=f"config file {file}")
    _refuse_run_options(list(pairs), run_options, source="--set")
    for source in (table, {k: v for k, v in flags.items() if v is not None}, pairs):
        values.update({config_key(k): v for k, v in source.items()})
    return values

