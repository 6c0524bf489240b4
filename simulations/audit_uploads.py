"""Audit everything that reached a FedCond server: ``fedcond audit`` on every ``OUT/uploads`` file.

Runs the audit command (recoverability + membership inference) on each received set, reusing one
real-data reference (``--reference-cache``), and writes one JSON with each file's verdict and
headline numbers, the command and the machine.

    python simulations/audit_uploads.py runs/demo/uploads --out docs/results/private_default_digits_audits.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import machine_facts, recorded_command  # noqa: E402 - simulations/ is a folder of scripts

from fedcond.cli.main import main as fedcond

KEYS = ("verdict", "nn_match_rate", "nn_distance_ratio", "mia_auc", "mia_tpr_at_1pct_fpr")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("uploads", type=Path, help="an OUT/uploads folder")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--data-dir", type=Path, default=None, help="torchvision-layout root (not for digits)")
    args = parser.parse_args(argv)
    files = sorted(args.uploads.glob("round-*/client-*.npz"))
    if not files:
        parser.error(f"no round-*/client-*.npz under {args.uploads}")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        cache = Path(work) / "reference.npz"
        for path in files:
            out = Path(work) / path.parent.name / path.stem
            extra = ["--data-dir", str(args.data_dir)] if args.data_dir else []
            code = fedcond(["audit", "--synthetic", str(path), "--reference-cache", str(cache), "--out", str(out),
                            *extra])
            if code != 0:
                raise SystemExit(f"fedcond audit failed on {path} (exit {code})")
            metrics = json.loads((out / "metrics.json").read_text())
            rows.append({"file": f"{path.parent.name}/{path.name}", **{k: metrics.get(k) for k in KEYS}})
            print(rows[-1], flush=True)
    payload = {
        "command": recorded_command(argv),
        **machine_facts(),
        "audits": rows,
        "leaks": sum(r["verdict"] == "leaks" for r in rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
