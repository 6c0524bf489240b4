"""Entry point: builds the parser from the sub-command modules and runs one."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from fedcond.cli.common import CommandError, forget_run_folders, remove_unused_run_folders

__all__ = ["build_parser", "main"]

# Each module defines ``register(subparsers)`` adding its parser with ``set_defaults(run=...)``.
_COMMAND_MODULES = (
    "fedcond.cli.distill",
    "fedcond.cli.simulate",
    "fedcond.cli.continual",
    "fedcond.cli.audit",
    "fedcond.cli.policy",
)


def build_parser() -> argparse.ArgumentParser:
    """The ``fedcond`` parser with one sub-command per module in ``_COMMAND_MODULES``."""
    parser = argparse.ArgumentParser(
        prog="fedcond",
        description="Federated and continual learning on distilled data (distribution matching).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command; returns the exit status (2 for bad input, with one line on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Flower logs through its own console handler; don't print each of its lines twice
    logging.getLogger("flwr").propagate = False
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    from fedcond.devices import keep_freed_cpu_memory  # torch loads only once a command runs

    keep_freed_cpu_memory()  # CPU training/DM re-use large activations instead of page-faulting
    try:
        return int(args.run(args) or 0)
    except (CommandError, ValueError, OSError) as exc:
        # ConfigError, DatasetNotFoundError and SyntheticSetError derive from these; OSError
        # covers unreadable or unwritable paths (--out naming a file, permissions) and failed
        # downloads: bad input gets one line naming the problem, never a traceback.
        if args.verbose:  # -v: the traceback too, to tell a library bug from bad input
            import traceback

            traceback.print_exc(file=sys.stderr)
        print(f"fedcond {args.command}: error: {exc}", file=sys.stderr)
        remove_unused_run_folders()  # a typo leaves no empty run folder behind
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        forget_run_folders()  # a later command in this process judges only its own folders


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
