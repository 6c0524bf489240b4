"""Render the results tables and figures of the docs and the README from the JSON files in docs/results.

Every table between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in README.md,
docs/results.md, docs/client-policy.md and docs/robustness.md is produced here from
``docs/results/*.json``; nothing in those blocks is typed by hand. Run it after adding or replacing a JSON file::

    python simulations/render_results.py            # rewrite the blocks in place, redraw stale figures
    python simulations/render_results.py --check    # exit 1 when a block or a figure differs (CI, tests)
    python simulations/render_results.py --redraw   # redraw every figure
    python simulations/render_results.py --provenance   # which JSON files lack command/commit/machine

It also draws the result figures in ``docs/figures`` (the names in ``FIGURES``) from the same
JSON files, with matplotlib's Agg backend at a fixed size and dpi, and without the PNG's
``Software`` text, so that one matplotlib version writes the same bytes every time. Beside each
``NAME.png`` it writes ``NAME.json``, the sidecar: the figure's source files, size, titles, axis
labels and every plotted series, exactly what the PNG is drawn from. ``--check`` compares the
sidecars (and that each PNG exists), not the PNG bytes: those differ between matplotlib and
FreeType versions although the data does not. The default run redraws a figure only when its
sidecar or PNG differs or is missing (``--redraw`` redraws every one, after a change of style
the sidecar does not record). The other images in ``docs/figures`` (``EXAMPLE_IMAGES``) show
synthetic sets, not numbers from docs/results, and are not produced here.

It reads JSON only (no torch), so it runs in a second (a few more when it draws).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
TARGETS = (
    ROOT / "README.md",
    ROOT / "docs" / "results.md",
    ROOT / "docs" / "client-policy.md",
    ROOT / "docs" / "robustness.md",
)
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.DOTALL)

MIB = 1024 * 1024


# ------------------------------------------------------------------------------ reading
@cache
def load(name: str) -> dict:
    """One JSON file of docs/results."""
    return json.loads((RESULTS / name).read_text())


def find(rows: Iterable[dict], **where) -> dict:
    """The one row of ``rows`` whose keys equal ``where``; a clear error otherwise."""
    hits = [row for row in rows if all(row.get(key) == value for key, value in where.items())]
    if len(hits) != 1:
        raise LookupError(f"{len(hits)} rows match {where}")
    return hits[0]


def method(file: str, **where) -> dict:
    """A row of a ``bench_dm.py`` JSON file's ``methods`` list."""
    return find(load(file)["methods"], **where)


def pct(mean: float | None, std: float | None = None, *, scale: float = 100.0, bold: bool = False) -> str:
    """``mean ± std`` in percent (the JSON holds fractions unless ``scale`` says otherwise)."""
    if mean is None:
        return "–"
    text = f"{mean * scale:.2f}" + (f" ± {std * scale:.2f}" if std is not None else "")
    return f"**{text}**" if bold else text


def link(file: str) -> str:
    """A markdown link to a JSON file, relative to the page it appears on."""
    return f"[json](results/{file})"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- tables
def dm_methods() -> str:
    """DM against the coresets at the same number of images per class."""
    digits13 = "bench_dm_methods_digits.json"
    digits_class = "bench_dm_digits_ipc1_50_dsa_class.json"
    digits10 = "bench_dm_digits_ipc10_10seeds.json"
    herd10 = load("bench_dm_digits_ipc10_baselines_10seeds.json")["summary_percent"]
    mnist = "bench_dm_methods_mnist_ipc1_10.json"
    mnist50 = "bench_dm_methods_mnist_ipc50.json"

    def seeds_mean(files: list[str], **where) -> tuple[float, float]:
        values = [method(f, **where)["accuracy_mean"] for f in files]
        return statistics.fmean(values), statistics.pstdev(values)

    rows = []
    for ipc in (1, 50):
        rows.append([
            "digits", str(ipc),
            pct(**_ms(method(digits13, ipc=ipc, method="random"))),
            pct(**_ms(method(digits13, ipc=ipc, method="herding"))),
            pct(**_ms(method(digits_class, ipc=ipc, method="dm")), bold=ipc == 1),
            pct(**_ms(method(digits_class, ipc=ipc, method="dm-mmd")), bold=ipc == 50),
            "3", f"{link(digits13)}, {link(digits_class)}",
        ])
    rows.insert(1, [
        "digits", "10",
        pct(**_ms(method(digits10, method="random"))),
        pct(herd10["herding"]["accuracy_mean"], scale=1.0),
        pct(**_ms(method(digits10, method="dm", matching="mean"))),
        pct(**_ms(method(digits10, method="dm-mmd")), bold=True),
        "10", f"{link(digits10)}, {link('bench_dm_digits_ipc10_baselines_10seeds.json')}",
    ])
    dm_files = [f"bench_dm_mnist_ipc10_dsa_class_seed{s}.json" for s in range(3)]
    mmd_files = [f"bench_dm_mnist_ipc10_mmd_dsa_class_seed{s}.json" for s in range(3)]
    mean10, std10 = seeds_mean(dm_files, ipc=10)  # one DM row per file
    mmd10, mmd_std10 = seeds_mean(mmd_files, ipc=10)
    rows.append([
        "mnist", "1",
        pct(**_ms(method(mnist, ipc=1, method="random"))),
        pct(**_ms(method(mnist, ipc=1, method="herding"))),
        pct(**_ms(method(mnist, ipc=1, method="dm")), bold=True) + " (200 it.)",
        "–", "1", link(mnist),
    ])
    rows.append([
        "mnist", "10",
        pct(**_ms(method(mnist, ipc=10, method="random"))) + " (seed 0)",
        pct(**_ms(method(mnist, ipc=10, method="herding"))) + " (seed 0)",
        pct(mean10, std10),
        pct(mmd10, mmd_std10, bold=True),
        "3", ", ".join(link(f) for f in [mnist, *dm_files[:1], *mmd_files[:1]]),
    ])
    rows.append([
        "mnist", "50",
        pct(**_ms(method(mnist50, ipc=50, method="random"))),
        pct(**_ms(method(mnist50, ipc=50, method="herding")), bold=True),
        pct(**_ms(method(mnist50, ipc=50, method="dm"))) + " (200 it.)",
        "–", "1", link(mnist50),
    ])
    return table(["dataset", "IPC", "random", "herding", "DM, mean", "DM, mmd", "seeds", "data"], rows)


def _ms(row: dict) -> dict:
    return {"mean": row["accuracy_mean"], "std": row["accuracy_std"]}


def _method_name(row: dict) -> str:
    """A bench_dm row's method in words, with the DistillConfig keys it set (``--dm-set``)."""
    name = DM_METHOD_NAMES.get(row["method"], row["method"])
    settings = ", ".join(f"{k}={v}" for k, v in (row.get("dm_settings") or {}).items())
    return f"{name} ({settings})" if settings else name


#: bench_dm.py method names in words
DM_METHOD_NAMES = {
    "random": "random real images",
    "herding": "herding coreset",
    "kmeans": "k-means centroids",
    "dm": "DM",
    "dm-mmd": "DM, mmd",
    "dm-reference": "DM, straightforward reference (per-class fp32 loop)",
    "dm+queue": "DM + IDM queue",
    "dm+expand": "DM + partition-and-expand (factor 2)",
    "dm+idm": "DM + IDM queue + partition-and-expand",
    "gm": "gradient matching (DSA)",
}
#: bench_dm.py runs under a wall-clock budget (``--dm-set time_budget=S``), with the issue's targets
TIME_BUDGET_FILES = {"bench_dm_mnist_ipc10_30min.json": 97.5, "bench_dm_cifar10_ipc10_60min.json": 48.9}


def dm_time_budget() -> str:
    """Quality per CPU-minute: the best set a wall-clock budget gives, against the target."""
    rows = []
    for file, target in TIME_BUDGET_FILES.items():
        if not (RESULTS / file).is_file():
            continue
        for r in load(file)["methods"]:
            budget = float((r.get("dm_settings") or {}).get("time_budget", 0))
            iterations = r.get("iterations_run") or [r["iterations"]]
            rows.append([
                r["dataset"], str(r["ipc"]), _method_name(r), f"{budget / 60:.0f}",
                str(round(sum(iterations) / len(iterations))), pct(r["accuracy_mean"], r["accuracy_std"]),
                f"{target:.1f}", f"{100 * r['accuracy_mean'] - target:+.2f}", link(file),
            ])
    return table(["dataset", "IPC", "method", "budget (min)", "iterations run", "test accuracy (%)", "target (%)",
                  "vs target", "data"], rows)


#: bench_dm.py runs with ``--time-budget S`` (every iterative method gets the same seconds per set)
EQUAL_BUDGET_FILES = ("bench_dm_budget_digits.json", "bench_dm_budget_fashion.json", "bench_dm_budget_mnist.json",
                      "bench_dm_budget_cifar10.json")
#: the columns of the equal-budget table, in order
EQUAL_BUDGET_METHODS = ("random", "herding", "kmeans", "dm", "dm-mmd", "dm+queue", "dm+idm", "gm")


def dm_equal_budget() -> str:
    """Every method at one wall-clock budget per set: a row per dataset and IPC, the best in bold.

    An iterative method's cell adds the iterations it ran within the budget (mean over seeds);
    a method the run did not reach is ``–``.
    """
    rows = []
    for file in EQUAL_BUDGET_FILES:
        if not (RESULTS / file).is_file():
            continue
        data = load(file)
        runs = [r for r in data["methods"] if r["method"] in EQUAL_BUDGET_METHODS and "not_possible" not in r]
        budgets = {r["time_budget"] for r in runs if r.get("time_budget") is not None}
        if len(budgets) != 1:
            raise ValueError(f"{file}: expected one --time-budget over its rows, found {sorted(budgets)}")
        (budget,) = budgets
        for dataset, ipc in sorted({(r["dataset"], r["ipc"]) for r in runs}, key=lambda key: key[1]):
            cells = {r["method"]: r for r in runs if r["dataset"] == dataset and r["ipc"] == ipc}
            best = max(r["accuracy_mean"] for r in cells.values())
            row = [dataset, str(ipc), f"{budget:g}", str(len(next(iter(cells.values()))["seeds"]))]
            for name in EQUAL_BUDGET_METHODS:
                if name not in cells:
                    row.append("–")
                    continue
                r = cells[name]
                cell = pct(r["accuracy_mean"], r["accuracy_std"], bold=r["accuracy_mean"] == best)
                if r.get("iterations_run"):
                    cell += f" ({round(sum(r['iterations_run']) / len(r['iterations_run']))} it.)"
                row.append(cell)
            rows.append([*row, link(file)])
    return table(["dataset", "IPC", "budget (s)", "seeds", *(DM_METHOD_NAMES[m] for m in EQUAL_BUDGET_METHODS),
                  "data"], rows)


def cpu_label(data: dict) -> str:
    """The CPU a results file was measured on, with its widest vector unit ("AMD EPYC, AVX-512")."""
    machine = data.get("cpu_model") or "not recorded"
    flags = " ".join(data.get("cpu_flags") or [])
    if flags:
        machine += (", AMX" if "amx" in flags else ", AVX-512 with BF16" if "avx512_bf16" in flags
                    else ", AVX-512" if "avx512f" in flags else ", AVX2 only")
    return machine


#: CIFAR-10 distillation files (bench_dm.py --datasets cifar10), every row of each is shown; the
#: best set of each IPC over all of them is in bold
CIFAR10_DM_FILES = (
    "bench_dm_cifar10_ipc1.json",
    "bench_dm_cifar10_ipc10.json",
    "bench_dm_cifar10_ipc10_coresets_reference.json",
)


def dm_cifar10() -> str:
    """CIFAR-10 (the JPEG copy) by IPC and method; the best set of each IPC in bold."""
    files = [(file, load(file)) for file in CIFAR10_DM_FILES if (RESULTS / file).is_file()]
    every = [r for _, data in files for r in data["methods"] if "not_possible" not in r]
    best = {ipc: max(r["accuracy_mean"] for r in every if r["ipc"] == ipc) for ipc in {r["ipc"] for r in every}}
    rows = []
    for file, data in sorted(files, key=lambda item: min(r["ipc"] for r in item[1]["methods"])):
        runs = [r for r in data["methods"] if "not_possible" not in r]
        for r in runs:
            iterations = r.get("iterations_run") or ([r["iterations"]] if r["iterations"] else None)
            rows.append([
                str(r["ipc"]), _method_name(r),
                str(round(sum(iterations) / len(iterations))) if iterations else "–",
                pct(r["accuracy_mean"], r["accuracy_std"], bold=r["accuracy_mean"] == best[r["ipc"]]),
                f"{r['make_seconds']:.0f}", f"{r['peak_rss_gib']:.2f}", cpu_label(data), link(file),
            ])
    return table(["IPC", "method", "iterations", "test accuracy (%)", "make s", "peak RSS GiB", "CPU", "data"],
                 rows)


#: bench_dm.py --sections speed files, one run (one machine) each
SPEED_FILES = (
    "bench_dm_speed_mnist_dsa_class.json",
    "bench_dm_speed_mnist_epyc_avx2.json",
    "bench_dm_speed_mnist_epyc_avx512.json",
)


def dm_speed() -> str:
    """Seconds per DM iteration against the per-class fp32 reference; ratios hold within one run."""
    rows = []
    for file in SPEED_FILES:
        data = load(file)
        machine = f"{cpu_label(data)}, {data['threads']} thread{'s' if data['threads'] > 1 else ''}"
        for name, v in data["speed"]["variants"].items():
            rows.append([machine, name, f"{v['wall_s_per_it']:.2f}", f"{v['cpu_s_per_it']:.2f}",
                         f"{v['speedup_wall']:.2f}x", link(file)])
    return table(["machine", "implementation", "s/iteration (wall)", "CPU s/iteration", "speed-up (wall)", "data"],
                 rows)


def federated() -> str:
    """FedCond one-shot against FedAvg: accuracy and uplink bytes."""
    digits_old = load("federated_digits_dir0.1.json")["summary"]
    mnist_all = load("federated_mnist10k_all.json")["summary"]
    other = {
        row["partition"]: row
        for run in load("federated_mnist10k_dir0.5_iid_oneshot_dsa_class.json")["runs"]
        for row in run["summary"]
    }

    def row(dataset: str, partition: str, name: str, summary: dict, fedavg: dict, file: str) -> list[str]:
        ratio = fedavg["uplink_bytes"] / summary["uplink_bytes"]
        return [
            dataset, partition, name, str(summary["seeds"]),
            pct(summary["test_accuracy_mean"], summary["test_accuracy_std"] or None),
            f"{summary['uplink_bytes'] / MIB:.2f} MiB", f"1/{ratio:.0f}", link(file),
        ]

    fedavg_digits = find(digits_old, method="fedavg")
    fedavg_mnist = {p: find(mnist_all, partition=p, method="fedavg") for p in ("dirichlet-0.1", "dirichlet-0.5", "iid")}
    rows = [
        row("digits", "Dirichlet 0.1", "FedCond one-shot, real init",
            load("federated_digits_dir0.1_dsa_class.json")["summary"][0], fedavg_digits,
            "federated_digits_dir0.1_dsa_class.json"),
        ["digits", "Dirichlet 0.1", "FedAvg, 20 rounds", "1", pct(fedavg_digits["test_accuracy_mean"]),
         f"{fedavg_digits['uplink_bytes'] / MIB:.1f} MiB", "1", link("federated_digits_dir0.1.json")],
        row("MNIST 10k", "Dirichlet 0.1", "FedCond one-shot, real init",
            load("federated_mnist10k_dir0.1_dsa_class.json")["summary"][0], fedavg_mnist["dirichlet-0.1"],
            "federated_mnist10k_dir0.1_dsa_class.json"),
        row("MNIST 10k", "Dirichlet 0.1", "FedCond one-shot, real init, `distill.factor=2`",
            load("federated_mnist10k_dir0.1_factor2.json")["summary"][0], fedavg_mnist["dirichlet-0.1"],
            "federated_mnist10k_dir0.1_factor2.json"),
        row("MNIST 10k", "Dirichlet 0.1", "FedCond, 2 rounds, real init",
            load("federated_mnist10k_dir0.1_multi_dsa_class.json")["summary"][0], fedavg_mnist["dirichlet-0.1"],
            "federated_mnist10k_dir0.1_multi_dsa_class.json"),
        row("MNIST 10k", "Dirichlet 0.5", "FedCond one-shot, real init", other["dirichlet-0.5"],
            fedavg_mnist["dirichlet-0.5"],
            "federated_mnist10k_dir0.5_iid_oneshot_dsa_class.json"),
        row("MNIST 10k", "IID", "FedCond one-shot, real init", other["iid"], fedavg_mnist["iid"],
            "federated_mnist10k_dir0.5_iid_oneshot_dsa_class.json"),
    ]
    for partition, label in (("dirichlet-0.1", "Dirichlet 0.1"), ("dirichlet-0.5", "Dirichlet 0.5"), ("iid", "IID")):
        avg = fedavg_mnist[partition]
        rows.append(["MNIST 10k", label, "FedAvg, 20 rounds", "1", pct(avg["test_accuracy_mean"]),
                     f"{avg['uplink_bytes'] / MIB:.1f} MiB", "1", link("federated_mnist10k_all.json")])
    return table(["data", "partition", "method", "seeds", "test accuracy (%)", "uplink", "uplink / FedAvg", "data"],
                 rows)


PRIVATE_DEFAULT_FILES = (
    "federated_private_default_digits.json",
    "federated_private_default_mnist10k.json",
    "federated_private_default_mnist10k_factor2.json",
    "federated_private_default_mnist10k_3seeds.json",
    "federated_private_default_mnist10k_ipc50_seed0.json",
)
#: FedAvg on the MNIST 10k Dirichlet-0.1 partitions, for the MNIST files that run FedCond alone:
#: the three-seed run where it exists, else seed 0 of the federated table's run
MNIST_FEDAVG_FILES = ("federated_fedavg_mnist10k_3seeds.json", "federated_mnist10k_all.json")


def _mnist_fedavg() -> tuple[str, dict, dict] | None:
    """(file, its data, its FedAvg Dirichlet-0.1 summary row) of the first MNIST FedAvg file present."""
    for file in MNIST_FEDAVG_FILES:
        if (RESULTS / file).is_file():
            data = load(file)
            return file, data, find(data["summary"], partition="dirichlet-0.1", method="fedavg")
    return None


def private_default() -> str:
    """The private default (noise init, client policy, release gate) beside real init and FedAvg."""
    names = {"fedcond-oneshot": "FedCond, private default", "fedcond-realinit": "FedCond, real init (permissive)",
             "fedavg": "FedAvg, 20 rounds"}
    rows = []
    mnist_fedavg = _mnist_fedavg()
    for file in PRIVATE_DEFAULT_FILES:
        if not (RESULTS / file).is_file():
            continue
        data = load(file)
        fedavg_elsewhere = None
        if not any(r["method"] == "fedavg" for r in data["summary"]) and data["summary"][0]["dataset"] == "mnist":
            fedavg_elsewhere = None if mnist_fedavg is None else mnist_fedavg[2]
        overrides = re.findall(r"--set (\S+)", data.get("command", ""))
        for summary in data["summary"]:
            ratio = summary.get("uplink_ratio_to_fedavg")
            if ratio is None and fedavg_elsewhere is not None:
                ratio = summary["uplink_bytes"] / fedavg_elsewhere["uplink_bytes"]
            runs = [r for r in data["results"] if r["method"] == summary["method"]]

            def total(key: str, runs: list[dict] = runs) -> int | None:
                return sum(r[key] for r in runs) if runs and all(key in r for r in runs) else None

            withheld, uploaded = total("gate_withheld"), total("gate_uploaded")
            gate = f"{withheld} / {withheld + uploaded}" if withheld is not None and uploaded else "-"
            flagged, audited = total("independent_flagged"), total("independent_audited")
            independent = f"{flagged} / {audited}" if flagged is not None else "-"
            shares = [r["gate_time_share"] for r in runs if r.get("gate_time_share")]
            share = max(shares) if shares else None
            name = names.get(summary["method"], summary["method"])
            if summary["method"] != "fedavg":
                name += "".join(f", `{item}`" for item in overrides)
            rows.append([
                summary["dataset"], name, str(summary["seeds"]),
                pct(summary["test_accuracy_mean"], summary["test_accuracy_std"] or None),
                f"{summary['uplink_bytes'] / MIB:.3f} MiB", f"1/{1 / ratio:.0f}" if ratio else "1", gate, independent,
                f"{100 * share:.1f}%" if share else "-", cpu_label(data), link(file),
            ])
    if mnist_fedavg is not None:
        file, data, fedavg = mnist_fedavg
        rows.append([
            "mnist", "FedAvg, 20 rounds", str(fedavg["seeds"]),
            pct(fedavg["test_accuracy_mean"], fedavg["test_accuracy_std"] or None),
            f"{fedavg['uplink_bytes'] / MIB:.3f} MiB", "1", "-", "-", "-", cpu_label(data), link(file),
        ])
    return table(["data", "method", "seeds", "test accuracy (%)", "uplink", "uplink / FedAvg",
                  "gate: withheld / made", "independent check: near-copies / uploaded", "gate share of client time",
                  "CPU", "data"], rows)


#: bench_server_recipe.py files: the global model retrained from a finished run's uploads
SERVER_RECIPE_FILES = ("server_recipe_mnist10k_factor2.json",)


def server_recipe() -> str:
    """The same uploads, other server epochs: the run's own recipe first, then each retraining."""
    fedavg = find(load("federated_mnist10k_all.json")["summary"], partition="dirichlet-0.1", method="fedavg")
    rows = []
    for file in SERVER_RECIPE_FILES:
        if not (RESULTS / file).is_file():
            continue
        data = load(file)
        source = data["source_run"]
        source_file = Path(source["results"]).name
        rows.append([f"{source['server_epochs']} (the run)", pct(source["test_accuracy"]),
                     f"{100 * (source['test_accuracy'] - fedavg['test_accuracy_mean']):+.2f}",
                     f"[json](results/{source_file})"])
        for recipe in data["recipes"]:
            rows.append([str(recipe["server_epochs"]), pct(recipe["test_accuracy"]),
                         f"{100 * (recipe['test_accuracy'] - fedavg['test_accuracy_mean']):+.2f}", link(file)])
    return table(["server epochs", "test accuracy (%)", "points vs FedAvg (20 rounds)", "data"], rows)


def gate_probe() -> str:
    """Per client of the demo partition: what the release gate flags in each space."""
    file = "gate_probe_digits_demo.json"
    rows = [
        [str(c["client"]), str(c["real_images"]), f"{c['classes']} ({c['smallest_class']})", str(c["synthetic_images"]),
         str(c["flagged_pixel"]), str(c["flagged_feature"]), str(c["flagged"])]
        for c in load(file)["clients"]
    ]
    return table(["client", "real images", "classes (smallest)", "synthetic", "flagged (pixel)", "flagged (feature)",
                  "flagged (either)"], rows)


def continual() -> str:
    """Full SplitMNIST: final average accuracy of every replay kind at equal memory."""
    summary = load("bench_continual_full_all.json")["summary"]
    factor2 = load("bench_continual_full_factor2.json")["summary"]

    def cell(rows: list[dict], **where) -> str:
        try:
            hit = find(rows, **where)
        except LookupError:
            return ""
        return pct(hit["accuracy_mean"], hit["accuracy_std"], scale=1.0)

    out = []
    for protocol in ("naive", "gdumb"):
        for memory in (1, 10, 20):
            base = {"protocol": protocol, "memory_per_class": memory}
            out.append([
                "Naive" if protocol == "naive" else "GDumb", str(memory),
                cell(summary, replay="random", **base),
                cell(summary, replay="herding", **base),
                cell(summary, replay="distilled", **base),
                cell(factor2, replay="distilled", **base) if memory == 10 else "",
            ])
    out.insert(0, ["Naive", "0", "no replay: " + cell(summary, protocol="naive", replay="none"), "", "",
                   "joint training: " + cell(summary, protocol="naive", replay="joint")])
    return table(["protocol", "memory / class", "random", "herding", "distilled", "distilled, `factor=2`"], out)


def privacy() -> str:
    """Audits of IPC-10 sets made with each method, and DP-DM."""
    rows = []
    for file, dataset in (("bench_privacy_digits.json", "digits, 100 it."),
                          ("bench_privacy_mnist.json", "MNIST, 30 it."),
                          ("bench_privacy_cifar10.json", "CIFAR-10 (JPEG copy), 200 it."),
                          ("bench_privacy_cifar10_noise_eps10.json", "CIFAR-10 (JPEG copy), 200 it.")):
        if not (RESULTS / file).is_file():
            continue
        data = load(file)
        for r in data["rows"]:
            if r.get("nn_match_rate") is None:
                continue
            epsilon = r.get("epsilon")
            rows.append([
                dataset, r["method"],
                pct(r["test_accuracy_mean"], r.get("test_accuracy_std") or None),
                f"{r['nn_match_rate'] * 100:.0f}%",
                f"{r['nn_distance_ratio']:.2f} (fresh {r['nn_distance_ratio_fresh']:.2f})",
                f"{r['mia_auc']:.3f} ({r['mia_attack']})",
                f"{epsilon:.3f}" if epsilon is not None else "–",
                r.get("verdict", ""), cpu_label(data), link(file),
            ])
    return table(["data", "method", "test accuracy (%)", "nn match", "NN ratio", "MIA AUC", "epsilon", "verdict",
                  "CPU", "data"], rows)


def dp_mnist() -> str:
    """DP-DM on MNIST at epsilon 1 over several noise draws."""
    file = "dp_dm_mnist_eps1_200it_secret_noise_3runs.json"
    d = load(file)
    runs = d["runs"]
    epsilons = sorted({round(r["epsilon"], 3) for r in runs if "epsilon" in r})
    return table(
        ["IPC", "iterations", "epsilon (spent)", "delta", "runs", "test accuracy (%)", "data"],
        [["10", "200", ", ".join(f"{e:.3f}" for e in epsilons) or "1", "1e-5", str(len(runs)),
          pct(d["mean_of_runs"], d["std_of_runs"], scale=1.0, bold=True), link(file)]],
    )


def _private_default_row() -> list[list[str]]:
    """The README row of the private default (noise init, client policy, release gate) on digits."""
    summary = load("federated_private_default_digits.json")["summary"]
    private, fedavg = find(summary, method="fedcond-oneshot"), find(summary, method="fedavg")
    return [[
        "federated, private default", "digits, 10 clients, Dirichlet 0.1, one round, release gate (3 seeds)",
        f"{private['test_accuracy_mean'] * 100:.2f}%",
        f"FedAvg (20 rounds) {fedavg['test_accuracy_mean'] * 100:.2f}%, with "
        f"{fedavg['uplink_bytes'] / private['uplink_bytes']:.0f}x the uplink",
    ]]


def _robust_readme_row() -> list[list[str]]:
    """A coalition of three label flippers of ten against the server-referenced outlier rule, the
    count cap alone (the default) and the rule judged by clients (bench_adaptive.py)."""
    results = load(ADAPTIVE_FILE)["results"]
    attack = "cycle:3:replace:1,2,3,4,5,6,7,8,9"

    def runs(rule: str) -> list[dict]:
        return [r for r in results if r["attack"] == attack and r["rule"] == rule]

    def mean(rule: str) -> float:
        return statistics.fmean(100 * r["test_accuracy"] for r in runs(rule) if r["test_accuracy"] is not None)

    closed = sum(r["test_accuracy"] is None for r in runs("clients"))
    judged_by_clients = (f"fails closed on {closed} of {len(runs('clients'))} seeds" if closed
                         else f"{mean('clients'):.2f}%")
    return [["hostile clients",
             "digits, 3 of 10 clients collude to flip labels; outlier rule judged by 30 real images per class "
             "the server holds (3 seeds)",
             f"{mean('server30'):.2f}%",
             f"count cap alone (the default) {mean('cap'):.2f}%; outlier rule judged by clients: {judged_by_clients}"]]


def readme() -> str:
    """The README's short table: one headline per part, each from its JSON."""
    dm = [method(f"bench_dm_mnist_ipc10_dsa_class_seed{s}.json", method="dm/class")["accuracy_mean"] for s in range(3)]
    random10 = statistics.fmean([
        method("bench_dm_methods_mnist_ipc1_10.json", ipc=10, method="random")["accuracy_mean"],
        *(method(f"bench_dm_mnist_ipc10_seed{s}.json", method="random")["accuracy_mean"] for s in (1, 2)),
    ])
    fed = load("federated_mnist10k_dir0.1_dsa_class.json")["summary"][0]
    avg = find(load("federated_mnist10k_all.json")["summary"], partition="dirichlet-0.1", method="fedavg")
    cl = load("bench_continual_full_factor2.json")["summary"]
    cl_dist = find(cl, protocol="naive", memory_per_class=10, replay="distilled")
    cl_rand = find(cl, protocol="naive", memory_per_class=10, replay="random")
    audit = {r["method"]: r for r in load("bench_privacy_digits.json")["rows"]}
    dp = load("dp_dm_mnist_eps1_200it_secret_noise_3runs.json")
    cifar = load("bench_dm_cifar10_ipc10.json")["methods"]
    cifar_idm, cifar_dm = find(cifar, method="dm+idm"), find(cifar, method="dm")
    rows = [
        ["condensation", "MNIST, 10 images per class (DM, 1000 it., 3 seeds)",
         f"{statistics.fmean(dm) * 100:.2f}%", f"random real images {random10 * 100:.2f}% (3 seeds)"],
        ["condensation", "CIFAR-10 (JPEG copy), 10 images per class, DM + IDM options, 200 it.",
         f"{cifar_idm['accuracy_mean'] * 100:.2f}%",
         f"DM {cifar_dm['accuracy_mean'] * 100:.2f}%, random real images "
         f"{find(cifar, method='random')['accuracy_mean'] * 100:.2f}%"],
        ["federated", "MNIST 10k, 10 clients, Dirichlet 0.1, one round, real init (permissive policy)",
         f"{fed['test_accuracy_mean'] * 100:.2f}%",
         f"FedAvg (20 rounds) {avg['test_accuracy_mean'] * 100:.2f}%, "
         f"with {avg['uplink_bytes'] / fed['uplink_bytes']:.0f}x the uplink"],
        *_private_default_row(),
        *_robust_readme_row(),
        ["continual", "full SplitMNIST, Naive, 10 images per class (`factor=2`)",
         f"{cl_dist['accuracy_mean']:.1f}%", f"random replay {cl_rand['accuracy_mean']:.1f}%"],
        ["audit", "digits, real-init DM: images that are near-copies",
         f"{audit['real-init']['nn_match_rate'] * 100:.0f}%",
         f"noise-init {audit['noise-init']['nn_match_rate'] * 100:.0f}%"],
        ["DP-DM", "MNIST, 10 images per class, epsilon 1, delta 1e-5",
         f"{dp['mean_of_runs']:.2f}%", "(3 noise draws)"],
    ]
    return table(["part", "setting", "fedcond", "compared with"], rows)


ROBUST_METHODS = {
    "fedcond-robust": "FedCond, count cap + outlier rule judged by clients (`outlier_nets=2`)",
    "fedcond-cap": "FedCond, count cap only (default)",
    "fedcond-plain": "FedCond, rule off",
    "fedavg": "FedAvg",
    "fedmedian": "FedMedian",
    "fedtrimmedavg": "FedTrimmedAvg",
    "krum[byzantine_nodes=3]": "Krum (f = 3)",
    "multikrum[byzantine_nodes=3]": "MultiKrum (f = 3)",
    "bulyan": "Bulyan (f = 1)",
}
ROBUST_FILES = {
    "attacks": "bench_robust_digits_attacks.json",
    "honest": "bench_robust_digits_honest.json",
    "cap": "bench_robust_digits_cap_only.json",
    "one": "bench_robust_digits_1attacker.json",
    "krum": "bench_robust_digits_krum_f3.json",
    "bulyan": "bench_robust_digits_bulyan_f1.json",
    "cap0": "bench_robust_digits_cap_seed0.json",
    "seeds12": "bench_robust_digits_seeds12.json",
    "judged": "bench_robust_digits_judged.json",
}
#: files whose ``fedcond-robust`` runs are the count cap alone (``outlier_nets=0``)
CAP_ONLY_FILES = ("cap", "one", "cap0", "seeds12")
#: files whose ``fedcond-robust`` runs judged with a prototype that held the judged client's own
#: images (``robust.py`` at the file's commit); the tables show the rule in ``judged``
OTHER_RULE_FILES = ("attacks", "honest")


def _robust_results(name: str) -> list[dict]:
    """The runs of one robustness file; the count-cap-only runs are renamed ``fedcond-cap``
    (:data:`CAP_ONLY_FILES` ran FedCond's robust variant with ``outlier_nets=0``); the runs of
    another outlier rule (:data:`OTHER_RULE_FILES`) are left out."""
    if not (RESULTS / ROBUST_FILES[name]).is_file():
        return []
    rows = load(ROBUST_FILES[name])["results"]
    if name == "cap":
        rows = [r for r in rows if r["method"] == "fedcond-robust"]
    if name in CAP_ONLY_FILES:
        rows = [{**r, "method": "fedcond-cap"} if r["method"] == "fedcond-robust" else r for r in rows]
    if name in OTHER_RULE_FILES:
        rows = [r for r in rows if r["method"] != "fedcond-robust"]
    return rows


def _robust_cell(rows: list[dict], *, name_a_lone_seed: bool = False) -> str:
    """``mean ± std`` over the seeds of ``rows`` (a lone run: its accuracy, and with
    ``name_a_lone_seed`` its seed), the replies dropped in all of them, and whether any ended
    with non-finite parameters."""
    if not rows:
        return "-"
    accs = [100 * (r["test_accuracy"] or 0.0) for r in rows]
    mean = statistics.fmean(accs)
    value = f"{mean:.2f} ± {statistics.pstdev(accs):.2f}" if len(accs) > 1 else f"{mean:.2f}"
    dropped = sum(r["dropped"] or 0 for r in rows)
    finite = "" if all(r["finite"] is not False for r in rows) else ", non-finite"
    lone = f", seed {rows[0]['seed']}" if name_a_lone_seed and len(rows) == 1 else ""
    return f"{value} ({dropped} dropped{finite}{lone})"


def _unique_runs(rows: Iterable[dict]) -> list[dict]:
    """One run per (seed, method, attack, attackers): the first file listing it wins."""
    runs: dict[tuple, dict] = {}
    for r in rows:
        runs.setdefault((r["seed"], r["method"], r["attack"], r["attackers"]), r)
    return list(runs.values())


def robust_honest() -> str:
    """Honest clients: FedCond with the cap and the outlier rule and without the rule, seed by seed."""
    results = [r for name in ("judged", "attacks", "honest") for r in _robust_results(name)
               if r["attackers"] == 0 and r["method"] in ("fedcond-robust", "fedcond-plain")]
    seeds = sorted({r["seed"] for r in results})
    rows = []
    for method in ("fedcond-robust", "fedcond-plain"):
        cells = [_robust_cell([r for r in results if r["method"] == method and r["seed"] == s]) for s in seeds]
        rows.append([ROBUST_METHODS[method], *cells])
    files = ", ".join(f"[{ROBUST_FILES[n]}](results/{ROBUST_FILES[n]})" for n in ("judged", "attacks", "honest"))
    return table(["method", *(f"seed {s}: test accuracy (%)" for s in seeds)], rows) + f"\nData: {files}.\n"


#: the files of the attacks table (every seed of every attack kind and count)
ATTACK_TABLE_FILES = ("judged", "attacks", "cap", "one", "cap0", "seeds12", "honest")


def robust_attacks() -> str:
    """1 and 3 of 10 clients hostile: every attack kind against every method, mean ± std over seeds."""
    results = _unique_runs(r for name in ATTACK_TABLE_FILES for r in _robust_results(name))
    methods = [m for m in ROBUST_METHODS if any(r["method"] == m for r in results)]
    kinds = [k for k in dict.fromkeys(r["attack"] for r in results) if k is not None]

    def cell(method: str, kind: str | None, attackers: int) -> str:
        return _robust_cell([r for r in results
                             if r["method"] == method and r["attack"] == kind and r["attackers"] == attackers],
                            name_a_lone_seed=True)

    rows = [["none", *(cell(m, None, 0) for m in methods)]]
    for kind in kinds:
        for n in sorted({r["attackers"] for r in results if r["attack"] == kind}):
            rows.append([f"`{kind}` x {n}", *(cell(m, kind, n) for m in methods)])
    files = ", ".join(f"[{ROBUST_FILES[n]}](results/{ROBUST_FILES[n]})" for n in ATTACK_TABLE_FILES
                      if (RESULTS / ROBUST_FILES[n]).is_file())
    return table(["attack", *(ROBUST_METHODS[m] for m in methods)], rows) + f"\nData: {files}.\n"


def robust_byzantine() -> str:
    """Flower's Byzantine-robust rules (Krum, MultiKrum, Bulyan) under every attack, seed 0."""
    results = _robust_results("krum") + _robust_results("bulyan")
    methods = [m for m in ROBUST_METHODS if any(r["method"] == m for r in results)]
    conditions = sorted({(r["attack"], r["attackers"]) for r in results},
                        key=lambda c: (c[0] is not None, c[0] or "", c[1]))

    def cell(method: str, kind: str | None, attackers: int) -> str:
        return _robust_cell([r for r in results
                             if r["method"] == method and r["attack"] == kind and r["attackers"] == attackers])

    rows = [["none" if kind is None else f"`{kind}` x {n}", *(cell(m, kind, n) for m in methods)]
            for kind, n in conditions]
    files = ", ".join(f"[{ROBUST_FILES[n]}](results/{ROBUST_FILES[n]})" for n in ("krum", "bulyan")
                      if (RESULTS / ROBUST_FILES[n]).is_file())
    return table(["attack", *(ROBUST_METHODS[m] for m in methods)], rows) + f"\nData: {files}.\n"


#: MNIST under attack (seed 0): file -> the rule its ``fedcond-*`` runs used
MNIST_ROBUST_FILES = {
    "bench_robust_mnist_cap_seed0.json": "count cap only (default)",
    "bench_robust_mnist_plain_seed0.json": "rule off",
    "bench_robust_mnist_seed0.json": "outlier rule judged by clients (`outlier_nets=2`)",
    "bench_robust_mnist_server30_seed0.json": "outlier rule judged by 30 server images per class",
}


def robust_mnist() -> str:
    """MNIST 10k, 10 clients, Dirichlet 0.1, seed 0: FedCond under each rule and attack that ran."""
    columns = {label: load(file)["results"] for file, label in MNIST_ROBUST_FILES.items()
               if (RESULTS / file).is_file()}
    conditions = sorted({(r["attack"], r["attackers"]) for runs in columns.values() for r in runs},
                        key=lambda c: (c[0] is not None, c[0] or "", c[1]))
    rows = []
    for kind, n in conditions:
        cells = [_robust_cell([r for r in runs if r["attack"] == kind and r["attackers"] == n])
                 for runs in columns.values()]
        rows.append(["none" if kind is None else f"`{kind}` x {n}", *cells])
    files = ", ".join(f"[{f}](results/{f})" for f in MNIST_ROBUST_FILES if (RESULTS / f).is_file())
    return table(["attack", *columns], rows) + f"\nData: {files}.\n"


ADAPTIVE_FILE = "bench_adaptive_digits.json"
ADAPTIVE_RULES = {
    "cap": "count cap only (default)",
    "clients": "outlier rule judged by clients (`outlier_nets=2`)",
}


def _adaptive_rule(rule: str) -> str:
    if rule in ADAPTIVE_RULES:
        return ADAPTIVE_RULES[rule]
    return f"outlier rule judged by {rule[6:]} server images per class (`reference_per_class={rule[6:]}`)"


def _adaptive_attack(name: str) -> str:
    """``cycle:3:replace:1,2,3`` -> words."""
    parts = name.split(":")
    if parts[0] == "none":
        return "none"
    if parts[0] == "harness":
        return f"`{parts[1]}` x {parts[2]}, each alone (the harness)"
    classes = parts[3].split(",")
    joined = "all classes" if len(classes) == 10 else "classes " + ", ".join(classes)
    how = f"replacing {parts[1]} clients" if parts[2] == "replace" else f"{parts[1]} clients more"
    return f"coalition of {parts[1]} ({how}), flip cycle over {joined}"


def robust_adaptive() -> str:
    """Coalitions against each reference of the outlier rule: mean ± std over seeds, honest clients rejected, alarms."""
    record = load(ADAPTIVE_FILE)
    results = record["results"]
    rules = list(dict.fromkeys(r["rule"] for r in results))
    rows = []
    for attack in dict.fromkeys(r["attack"] for r in results):
        cells = []
        for rule in rules:
            runs = [r for r in results if r["attack"] == attack and r["rule"] == rule]
            accs = [100 * r["test_accuracy"] for r in runs if r["test_accuracy"] is not None]
            alarms = len(runs) - len(accs)
            text = "-"
            if len(accs) > 1:
                text = f"{statistics.fmean(accs):.2f} ± {statistics.pstdev(accs):.2f}"
            elif accs:
                text = f"{accs[0]:.2f}"
            notes = [f"{sum(len(r['honest_rejected']) for r in runs)} honest rejected"]
            if alarms:
                notes.append(f"{alarms} of {len(runs)} seeds failed closed")
            cells.append(f"{text} ({', '.join(notes)})")
        rows.append([_adaptive_attack(attack), *cells])
    seeds = sorted({r["seed"] for r in results})
    header = ["attack (3 hostile clients)", *(_adaptive_rule(r) for r in rules)]
    return (table(header, rows) + f"\nSeeds {', '.join(map(str, seeds))}; a seed that failed closed trained no "
            f"model and is left out of the mean. Data: [{ADAPTIVE_FILE}](results/{ADAPTIVE_FILE}).\n")


TABLES: dict[str, Callable[[], str]] = {
    "robust-honest": robust_honest,
    "robust-adaptive": robust_adaptive,
    "robust-mnist": robust_mnist,
    "robust-attacks": robust_attacks,
    "robust-byzantine": robust_byzantine,
    "dm-methods": dm_methods,
    "dm-speed": dm_speed,
    "dm-time-budget": dm_time_budget,
    "dm-cifar10": dm_cifar10,
    "dm-equal-budget": dm_equal_budget,
    "federated": federated,
    "private-default": private_default,
    "gate-probe": gate_probe,
    "server-recipe": server_recipe,
    "continual": continual,
    "privacy": privacy,
    "dp-mnist": dp_mnist,
    "readme": readme,
}


# ------------------------------------------------------------------------------ figures
FIGURES_DIR = ROOT / "docs" / "figures"
#: images in docs/figures that show example images (a synthetic set, k-means centroids, the
#: nearest-neighbour pairs of an audit), not numbers from docs/results: not drawn here
EXAMPLE_IMAGES = (
    "kmeans_centroids_mnist_ipc10.png",
    "privacy_digits_real_init_class_nn.png",
    "privacy_cifar10_real_init_nn.png",
    "privacy_digits_real_init_nn.png",
    "synthetic_mnist_ipc10.png",
)
DPI = 120
FEDERATED_NAMES = {
    "fedcond-oneshot": "FedCond, one round",
    "fedcond-multi2": "FedCond, 2 rounds",
    "fedcond-multi3": "FedCond, 3 rounds",
    "fedavg": "FedAvg",
    "fedprox": "FedProx",
}
PARTITION_NAMES = {"dirichlet-0.1": "Dirichlet 0.1", "dirichlet-0.5": "Dirichlet 0.5", "iid": "IID"}


def _values(values: Iterable[float], scale: float = 1.0) -> list[float]:
    """Plotted numbers, rounded so that the sidecar stays readable (far below a pixel)."""
    return [round(v * scale, 4) for v in values]


def robust_attacks_figure() -> dict:
    """Accuracy under each attack (3 of 10 clients hostile, seed 0), one point series per method."""
    results = _unique_runs(r for name in ("judged", "attacks", "cap", "cap0") for r in _robust_results(name)
                           if r["seed"] == 0)
    kinds = [None, *(k for k in dict.fromkeys(r["attack"] for r in results) if k is not None)]
    methods = [m for m in ROBUST_METHODS if any(r["method"] == m for r in results)]
    series = []
    for method in methods:
        xs, ys = [], []
        for i, kind in enumerate(kinds):
            runs = [r for r in results if r["method"] == method and r["attack"] == kind
                    and r["attackers"] == (0 if kind is None else 3)]
            if runs:
                xs.append(i)
                ys.append(sum(r["test_accuracy"] or 0.0 for r in runs) / len(runs))
        series.append({"label": ROBUST_METHODS[method].replace("`", ""), "x": xs, "y": _values(ys, 100)})
    return {
        "source": [ROBUST_FILES[n] for n in ("judged", "attacks", "cap", "cap0")],
        "size_in": [11.0, 4.6],
        "dpi": DPI,
        "xlabel": "attack (3 of 10 clients; none: every client honest)",
        "ylabel": "test accuracy (%)",
        "lines": False,
        "legend_outside": True,
        "suptitle": "digits, Dirichlet 0.1, 10 clients, seed 0",
        "panels": [{"title": "accuracy of the global model under attack", "series": series, "hlines": [],
                    "xticklabels": ["none" if k is None else k for k in kinds]}],
    }


def federated_curve(file: str, partition: str, dataset: str) -> dict:
    """Test accuracy after each round, one curve per method of one partition (round 0: the initial model)."""
    runs = [r for r in load(file)["results"] if r["partition"] == partition]
    methods = [r["method"] for r in runs]
    if len(set(methods)) != len(methods):
        raise LookupError(f"{file}: more than one run per method for {partition}; the curves would mix seeds")
    seeds = sorted({r["seed"] for r in runs})
    clients = sorted({r["config"]["num_clients"] for r in runs})
    series = [
        {"label": FEDERATED_NAMES.get(r["method"], r["method"]), "x": list(range(len(r["accuracy_by_round"]))),
         "y": _values(r["accuracy_by_round"], 100.0)}
        for r in runs
    ]
    return {
        "sources": [f"docs/results/{file}"],
        "size_in": [5.0, 3.8], "dpi": DPI,
        "xlabel": "round (0 = initial model)", "ylabel": "test accuracy (%)", "integer_x": True,
        "panels": [{
            "title": f"{dataset}, {PARTITION_NAMES[partition]}, {', '.join(map(str, clients))} clients "
                     f"(seed {', '.join(map(str, seeds))})",
            "series": series, "hlines": [],
        }],
    }


def continual_memory_curve() -> dict:
    """Full SplitMNIST: final average accuracy against memory size, one panel per protocol."""
    file = "bench_continual_full_all.json"
    summary = load(file)["summary"]
    kinds = {"random": "random real images", "herding": "herding", "distilled": "distilled (DM, 100 it.)"}
    titles = {"naive": "Naive (2 epochs per experience)", "gdumb": "GDumb (300 epochs on the memory)"}
    seeds = ", ".join(str(n) for n in sorted({r["seeds"] for r in summary}))
    panels = []
    for protocol, title in titles.items():
        series = []
        for kind, label in kinds.items():
            rows = sorted((r for r in summary if r["protocol"] == protocol and r["replay"] == kind),
                          key=lambda r: r["memory_per_class"])
            series.append({
                "label": label, "x": [r["memory_per_class"] for r in rows],
                "y": _values(r["accuracy_mean"] for r in rows), "yerr": _values(r["accuracy_std"] for r in rows),
            })
        hlines = [
            {"label": f"{name} ({r['accuracy_mean']:.1f})", "y": round(r["accuracy_mean"], 4), "style": style}
            for replay, name, style in (("none", "no replay", ":"), ("joint", "joint training", "--"))
            for r in summary if r["protocol"] == protocol and r["replay"] == replay
        ]
        panels.append({"title": title, "series": series, "hlines": hlines})
    return {
        "sources": [f"docs/results/{file}"],
        "size_in": [9.2, 4.0], "dpi": DPI,
        "suptitle": f"Full SplitMNIST (class-incremental, 5 experiences), mean ± std over {seeds} seeds",
        "xlabel": "memory (images per class)", "ylabel": "final average accuracy (%)",
        "integer_x": False, "sharey": True,
        "panels": panels,
    }


FIGURES: dict[str, Callable[[], dict]] = {
    "federated_accuracy_digits_dir0.1":
        lambda: federated_curve("federated_digits_dir0.1.json", "dirichlet-0.1", "digits"),
    "federated_accuracy_mnist10k_dir0.1":
        lambda: federated_curve("federated_mnist10k_all.json", "dirichlet-0.1", "MNIST 10k"),
    "federated_accuracy_mnist10k_dir0.5":
        lambda: federated_curve("federated_mnist10k_all.json", "dirichlet-0.5", "MNIST 10k"),
    "federated_accuracy_mnist10k_iid": lambda: federated_curve("federated_mnist10k_all.json", "iid", "MNIST 10k"),
    "continual_split_mnist_full": continual_memory_curve,
    "robustness_digits_attacks": robust_attacks_figure,
}


def sidecar(spec: dict) -> str:
    """The text of a figure's sidecar: what ``--check`` compares (one line per list of numbers)."""

    def dump(value, depth: int) -> str:
        inner, outer = " " * (depth + 1), " " * depth
        if isinstance(value, dict) and value:
            items = (f"{inner}{json.dumps(k)}: {dump(v, depth + 1)}" for k, v in value.items())
            return "{\n" + ",\n".join(items) + f"\n{outer}}}"
        if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
            return "[\n" + ",\n".join(f"{inner}{dump(v, depth + 1)}" for v in value) + f"\n{outer}]"
        return json.dumps(value, ensure_ascii=False)

    return dump(spec, 0) + "\n"


def draw(spec: dict, path: Path) -> None:
    """Draw the PNG of one figure from its sidecar data (Agg, fixed size and dpi, no Software text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = spec["panels"]
    fig, axes = plt.subplots(1, len(panels), figsize=tuple(spec["size_in"]), sharey=spec.get("sharey", False),
                             squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for i, s in enumerate(panel["series"]):
            # a marker and a line style per series, earlier ones larger: curves that coincide
            # (FedAvg and FedProx, one and three FedCond rounds) stay visible
            style = {"marker": "osD^v"[i % 5], "markersize": max(3.0, 7.0 - 1.3 * i), "color": f"C{i}",
                     "ls": ("-", "--", "-.", ":")[i % 4], "label": s["label"], "zorder": 2 + i}
            if not spec.get("lines", True):  # categories on x: points, no lines between them
                style["ls"] = "none"
            if "yerr" in s:
                ax.errorbar(s["x"], s["y"], yerr=s["yerr"], capsize=3, **style)
            else:
                ax.plot(s["x"], s["y"], **style)
        for line in panel["hlines"]:
            ax.axhline(line["y"], color="grey", ls=line["style"], lw=1, label=line["label"])
        if panel.get("xticklabels"):
            ax.set_xticks(range(len(panel["xticklabels"])))
            ax.set_xticklabels(panel["xticklabels"], rotation=30, ha="right", fontsize=8)
        elif spec.get("integer_x"):
            xs = [x for s in panel["series"] for x in s["x"]]
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
        else:
            ax.set_xticks(sorted({x for s in panel["series"] for x in s["x"]}))
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel(spec["xlabel"])
        ax.grid(alpha=0.3)
        if spec.get("legend_outside"):
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        else:
            ax.legend(fontsize=8)
    axes[0][0].set_ylabel(spec["ylabel"])
    if spec.get("suptitle"):
        fig.suptitle(spec["suptitle"], fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=spec["dpi"], metadata={"Software": None})
    plt.close(fig)


def render_figures(*, check: bool, redraw: bool = False) -> list[Path]:
    """The figures whose PNG or sidecar is missing or differs; drawn unless ``check``."""
    stale = []
    for name, make in FIGURES.items():
        spec = make()
        text = sidecar(spec)
        png, side = FIGURES_DIR / f"{name}.png", FIGURES_DIR / f"{name}.json"
        current = side.read_text() if side.is_file() else None
        if png.is_file() and current == text and not redraw:
            continue
        stale.append(png)
        if not check:
            draw(spec, png)
            side.write_text(text)
    return stale


# ------------------------------------------------------------------------------ writing
def render(text: str, *, links_from: Path) -> str:
    """``text`` with every results block replaced by its table."""
    prefix = "docs/" if links_from.parent == ROOT else ""

    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in TABLES:
            raise KeyError(f"unknown results block {name!r}; known: {', '.join(TABLES)}")
        body = TABLES[name]().replace("](results/", f"]({prefix}results/")
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(replace, text)


COMMIT = re.compile(r"[0-9a-f]{40}(-dirty)?")


def missing_provenance(data: dict) -> list[str]:
    """What of ``command``, ``commit`` and ``machine`` one results file lacks.

    command: ``command`` (a string, or null beside a ``command_basis`` saying why), ``commands``
    or ``sources``; commit: a 40-hex ``commit`` (``-dirty`` allowed, as provenance.py writes it);
    machine: ``cpu_flags`` (provenance.py's facts) or ``machine`` (saying they were not recorded).
    """
    command = data.get("command")
    has_command = (isinstance(command, str) and command.strip()) or (
        "command" in data and command is None and data.get("command_basis")
    ) or data.get("commands") or data.get("sources")
    commit = data.get("commit")
    checks = {
        "command": has_command,
        "commit": isinstance(commit, str) and COMMIT.fullmatch(commit),
        "machine": "cpu_flags" in data or "machine" in data,
    }
    return [what for what, ok in checks.items() if not ok]


def provenance() -> list[str]:
    """One line per JSON file lacking a command, a commit or machine facts."""
    lines = []
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        missing = missing_provenance(data) if isinstance(data, dict) else ["command", "commit", "machine"]
        if missing:
            lines.append(f"{path.name}: no {', '.join(missing)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a file differs from what would be written")
    parser.add_argument("--provenance", action="store_true",
                        help="list JSON files lacking command, commit or machine facts")
    parser.add_argument("--redraw", action="store_true",
                        help="redraw every figure, even one whose sidecar matches")
    args = parser.parse_args(argv)
    if args.provenance:
        print("\n".join(provenance()))
        return 0
    stale = []
    for target in TARGETS:
        text = target.read_text()
        new = render(text, links_from=target)
        if new != text:
            stale.append(target)
            if not args.check:
                target.write_text(new)
    figures = render_figures(check=args.check, redraw=args.redraw and not args.check)

    def names(paths: list[Path]) -> str:
        return ", ".join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in paths)

    if args.check and stale:
        print(f"results tables differ from docs/results/*.json in: {names(stale)}; "
              "run python simulations/render_results.py", file=sys.stderr)
    if args.check and figures:
        print(f"figures missing or their sidecars differ from docs/results/*.json: {names(figures)}; "
              "run python simulations/render_results.py", file=sys.stderr)
    return 1 if args.check and (stale or figures) else 0


if __name__ == "__main__":
    sys.exit(main())
