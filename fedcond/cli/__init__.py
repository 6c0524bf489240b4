"""The ``fedcond`` command: one sub-command module per part of the system."""

from fedcond.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
