"""``fedcond policy FILE``: check a client-policy file the way a node reads it, before it starts.

A node operator runs it before ``flower-supernode --node-config "policy='FILE'"``: a malformed
file, an unknown key, a contradictory rule, a data source that does not load, a DP ledger that
is corrupt, belongs to other data or lies in a folder the node cannot write, or a checkpoint
folder the node cannot write is one clear error here (exit 2), not a refusal at the first round.
On success it prints the effective rules (defaults filled in) and whether the policy is
permissive.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from fedcond.cli.common import CommandError, console

__all__ = ["register", "run_policy"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``policy`` subcommand."""
    parser = subparsers.add_parser(
        "policy",
        help="check a client-policy file (run it before starting a SuperNode with it)",
        description="Reads FILE as a node would (docs/client-policy.md), loads its data source and opens its "
        "DP ledger, and prints the effective policy as JSON.",
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="client-policy TOML file")
    parser.set_defaults(run=run_policy)


def run_policy(args: argparse.Namespace) -> int:
    """Validate ``args.file``; print the effective policy; exit 2 on any problem."""
    from fedcond.federated.policy import PolicyError, load_node_policy
    from fedcond.privacy.ledger import LedgerError

    try:
        policy = load_node_policy(args.file)
    except (PolicyError, LedgerError) as exc:
        raise CommandError(str(exc)) from exc
    if policy.data.dataset is not None:
        from fedcond.config import DataConfig
        from fedcond.federated.client import load_splits
        from fedcond.privacy.ledger import PrivacyLedger, data_source_digest

        train = load_splits(DataConfig(dataset=policy.data.dataset, data_dir=policy.data.data_dir)).train
        if policy.dp.ledger is not None:
            ledger = PrivacyLedger(policy.dp.ledger, source=data_source_digest(train.images, train.labels))
            in_flight = f"; {len(ledger.reserved)} run(s) in flight (reserved)" if ledger.reserved else ""
            console.print(
                f"DP ledger {policy.dp.ledger}: {len(ledger.runs)} run(s), epsilon spent "
                f"{ledger.spent(delta=policy.dp.budget_delta):.4f} at delta {policy.dp.budget_delta:g}{in_flight}"
            )
        console.print(f"data source {policy.data.dataset!r}: {len(train)} training images")
    folder = policy.checkpoints.folder
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CommandError(f"policy key 'checkpoints.folder': cannot create {folder} ({exc.strerror})") from exc
        if not os.access(folder, os.W_OK):
            raise CommandError(f"policy key 'checkpoints.folder': {folder} is not writable by this node")
    print(json.dumps(policy.as_dict(), indent=1))
    if policy.permissive:
        console.print("[yellow]note: this policy is permissive: uploads may hold or reveal training images[/]")
    return 0
