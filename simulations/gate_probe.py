"""Which synthetic images does the release gate flag, and in which space? (JSON out)

Condenses every client of a federated job (the demo by default: digits, 10 clients, Dirichlet
0.1, IPC 10, 200 DM iterations from noise) exactly as the ClientApp does, and tests each set
with the release gate, reporting per client its size, its smallest class, and the images
flagged in pixel space, in feature space and in either (the gate's rule).

    python simulations/gate_probe.py --out docs/results/gate_probe_digits_demo.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import machine_facts, recorded_command  # noqa: E402 - simulations/ is a folder of scripts

from fedcond.cli.common import overrides_from
from fedcond.federated.client import client_partition, condense_partition
from fedcond.federated.job import DEMO_JOB, job_from_mapping
from fedcond.privacy.gate import ReleaseGate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="job key over the demo's")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    job = job_from_mapping({**DEMO_JOB, "device": "cpu", **overrides_from(args.set)})
    fed = job.federated
    rows = []
    for pid in range(fed.num_clients):
        data = client_partition(job, partition_id=pid, num_partitions=fed.num_clients)
        distill = dataclasses.replace(fed.distill, seed=fed.distill.seed + 1000 * pid + 1)  # as the ClientApp
        synthetic = condense_partition(data, distill=distill, device="cpu").synthetic
        gate = ReleaseGate(data.images, spec=data.spec, seed=distill.seed)
        result = gate.test(synthetic)
        per_space = {
            space: int(((d < gate.thresholds[space]) | (d == 0)).sum()) for space, d in result.distances.items()
        }
        counts = data.class_counts()
        rows.append({
            "client": pid,
            "real_images": len(data),
            "classes": int((counts > 0).sum()),
            "smallest_class": int(counts[counts > 0].min()),
            "synthetic_images": len(synthetic),
            "flagged_pixel": per_space["pixel"],
            "flagged_feature": per_space.get("feature"),
            "flagged": result.flagged_count,
        })
        print(rows[-1], flush=True)
    payload = {
        "command": recorded_command(argv),
        **machine_facts(),
        "job": {k: v for k, v in DEMO_JOB.items()} | overrides_from(args.set),
        "clients": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
