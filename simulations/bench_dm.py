"""Benchmark fedcond's DM against a straightforward implementation of the original algorithm.

Reports, side by side in one run (JSON + a markdown table):

1. *speed*: seconds per DM iteration on MNIST at IPC 10, batch_real 256, for the reference
   (per-class loop, fp32, as in the original code) and for fedcond (batched, inference-mode
   real side, bf16 autocast, optional torch.compile), with an ablation, as ratios;
2. *equal-iteration accuracy*: both implementations after the same number of iterations,
   evaluated with the same protocol (fedcond must not be worse by more than 1 point);
3. *DM vs random vs herding vs k-means centroids* at IPC 1/10/50 on digits and MNIST, DM with
   mean matching (the paper) and with mean + kernel MMD (``--dm-matchings``), started from
   random real images or ``--dm-init`` (e.g. ``kmeans``); with ``--datasets fashion-mnist``
   and ``--datasets cifar10 --cifar-dir ROOT`` on Fashion-MNIST and CIFAR-10 too;
   ``--dm-variants`` adds DM rows with IDM's options
   (queue of partly trained embedders, partition-and-expand) and ``--gm-iterations`` a
   gradient-matching row;
4. *whole*: the same protocol trained on every training image (the field's "whole dataset"
   upper bound), by default on digits only, where it costs seconds per network.

Usage::

    python simulations/bench_dm.py --data-dir ../shared/data --out results/bench_dm
    python simulations/bench_dm.py --quick --out /tmp/bench_dm     # digits only, minutes

The reference implementation lives here, in the benchmark, on purpose: it is the yardstick,
not library code. It uses the same siamese augmentation operators and the same network, with the
reference code's Siamese mode: one parameter draw per class and iteration, applied to every real
and synthetic image of that class (``theta[:] = theta[0]`` in VICO-UoE/DatasetCondensation).
The reference always draws per class; ``--dm-dsa-layout sample`` runs the library's DM rows
with one parameter set per image instead (``layout="sample"``).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import earlier_run, machine_facts, recorded_command  # noqa: E402 - simulations/ is a folder of scripts

from fedcond.cli.common import overrides_from
from fedcond.config import AugmentConfig, DataConfig, DistillConfig, EvalConfig, parse_config
from fedcond.data import ArrayDataset, DatasetSplits, load_dataset
from fedcond.data.registry import DIGIT_DATASETS
from fedcond.devices import keep_freed_cpu_memory
from fedcond.distill import DistributionMatching, SyntheticSet, evaluate_synthetic, get_condenser
from fedcond.distill.augment import LAYOUTS, SiameseAugment
from fedcond.distill.condenser import ShortClassError
from fedcond.distill.dm import INITS, initial_synthetic
from fedcond.distill.matching import MATCHINGS
from fedcond.models import get_model

DEFAULT_LAYOUT = AugmentConfig().layout  # rows of another layout are suffixed /LAYOUT

#: datasets of the methods section besides digits and MNIST: option prefix, and the option
#: naming the folder (``--data-dir``: torchvision's root; ``--cifar-dir``: the CIFAR-10 root)
EXTRA_DATASETS = {"fashion-mnist": ("fashion", "data_dir"), "cifar10": ("cifar", "cifar_dir")}

#: DM rows with IDM's options (Zhao et al., CVPR 2023), named ``dm+NAME``: ``queue`` matches
#: with a queue of partly trained embedders, ``expand`` is partition-and-expand (multi-formation,
#: factor 2: four half-resolution tiles per stored image), ``idm`` both
DM_VARIANTS = ("queue", "expand", "idm")


def dm_variant_options(name: str, *, idm_queue: int) -> dict[str, int]:
    """The :class:`DistillConfig` fields of the DM variant ``name`` (see :data:`DM_VARIANTS`)."""
    options = {"queue": {"queue_size": idm_queue}, "expand": {"factor": 2},
               "idm": {"queue_size": idm_queue, "factor": 2}}
    if name not in options:
        raise ValueError(f"unknown DM variant {name!r} ({', '.join(DM_VARIANTS)})")
    return options[name]


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


# ----------------------------------------------------------------------------- reference DM
def reference_dm(
    data: ArrayDataset, *, ipc: int, iterations: int, seed: int, batch_real: int = 256, device: str = "cpu"
) -> tuple[SyntheticSet, float]:
    """The original algorithm, written straightforwardly: per-class loop, fp32, eager.

    Returns the synthetic set and the seconds spent in the optimisation loop.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    spec = data.spec
    classes = list(range(spec.num_classes))
    images, labels = initial_synthetic(data, ipc=ipc, init="real", classes=classes, generator=generator)
    image_syn = images.clone().to(device).requires_grad_(True)
    real_images = data.images.to(device)
    optimizer = torch.optim.SGD([image_syn], lr=1.0, momentum=0.5)
    indices_class = [torch.nonzero(data.labels == c).flatten() for c in classes]
    augment = SiameseAugment(drop_flip=spec.name in DIGIT_DATASETS)
    start = time.perf_counter()
    for _ in range(iterations):
        net = get_model("convnet", spec).to(device)  # fresh random network, global RNG as in the original
        net.train()
        for p in net.parameters():
            p.requires_grad = False
        loss = torch.tensor(0.0, device=device)
        for c in classes:
            idx = indices_class[c][torch.randperm(len(indices_class[c]), generator=generator)[:batch_real]]
            img_real = real_images[idx.to(device)]
            img_syn = image_syn[c * ipc : (c + 1) * ipc]
            params = augment.sample(1, generator=generator, image_size=spec.image_size)  # Siamese: one per class
            img_real = augment.apply(img_real, params, torch.zeros(len(idx), dtype=torch.long))
            img_syn = augment.apply(img_syn, params, torch.zeros(ipc, dtype=torch.long))
            output_real = net.embed(img_real).detach()
            output_syn = net.embed(img_syn)
            loss = loss + torch.sum((torch.mean(output_real, dim=0) - torch.mean(output_syn, dim=0)) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if device != "cpu":
        torch.cuda.synchronize()  # before reading the clock: CUDA work is asynchronous
    seconds = time.perf_counter() - start
    meta = {"dataset": spec.name, "num_classes": spec.num_classes, "ipc": ipc, "method": "reference-dm"}
    return SyntheticSet(image_syn.detach().cpu().clone(), labels, meta), seconds


def time_per_iteration(run, *, iterations: int) -> dict[str, float]:  # noqa: ANN001
    """Wall and process-CPU seconds per iteration of ``run(iterations)`` (after a warm-up call)."""
    run(1)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    run(iterations)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return {
        "wall_s_per_it": (time.perf_counter() - wall) / iterations,
        "cpu_s_per_it": (time.process_time() - cpu) / iterations,
    }


def speed_section(data: ArrayDataset, *, iterations: int, seed: int, device: str = "cpu") -> dict[str, Any]:
    base = DistillConfig(ipc=10, iterations=iterations, seed=seed, batch_real=256)
    variants = {
        "reference (per-class loop, fp32)": lambda n: reference_dm(
            data, ipc=10, iterations=n, seed=seed, device=device),
        "fedcond fp32 eager": lambda n: DistributionMatching(
            replace(base, iterations=n, mixed_precision=False), device=device).condense(data),
        "fedcond bf16 eager": lambda n: DistributionMatching(replace(base, iterations=n), device=device).condense(data),
    }
    compiled_engine = DistributionMatching(replace(base, compile=True), device=device)

    def compiled(n: int):  # noqa: ANN202 - one engine, so the compiled graph is reused after warm-up
        compiled_engine.config = replace(base, iterations=n, compile=True)
        return compiled_engine.condense(data)

    variants["fedcond bf16 + torch.compile"] = compiled
    rows = {}
    for name, run in variants.items():
        rows[name] = time_per_iteration(run, iterations=iterations)
        print(f"  {name}: {rows[name]['wall_s_per_it']:.3f} s/it (cpu {rows[name]['cpu_s_per_it']:.3f})", flush=True)
    ref = rows["reference (per-class loop, fp32)"]
    for row in rows.values():
        row["speedup_wall"] = ref["wall_s_per_it"] / row["wall_s_per_it"]
        row["speedup_cpu"] = ref["cpu_s_per_it"] / row["cpu_s_per_it"]
    return {"dataset": data.spec.name, "ipc": 10, "batch_real": 256, "timed_iterations": iterations,
            "device": device, "variants": rows}


def evaluate(
    syn: SyntheticSet, splits: DatasetSplits, evaluation: EvalConfig, seed: int, device: str
) -> dict[str, float]:
    result = evaluate_synthetic(syn, splits.test, evaluation, seed=seed, device=device)
    return {"mean": result.mean, "std": result.std, "runs": result.accuracies}


def equal_iterations_section(
    splits: DatasetSplits, *, iterations: int, evaluation: EvalConfig, seeds: list[int], compile_dm: bool, device: str
) -> dict[str, Any]:
    out: dict[str, Any] = {"dataset": splits.spec.name, "ipc": 10, "iterations": iterations, "seeds": seeds}
    ref_acc, ours_acc, ref_s, ours_s = [], [], [], []
    for seed in seeds:
        syn, seconds = reference_dm(splits.train, ipc=10, iterations=iterations, seed=seed, device=device)
        ref_s.append(seconds)
        ref_acc.append(evaluate(syn, splits, evaluation, seed, device)["mean"])
        result = DistributionMatching(
            DistillConfig(ipc=10, iterations=iterations, seed=seed, compile=compile_dm), device=device
        ).condense(splits.train)
        ours_s.append(result.seconds)
        ours_acc.append(evaluate(result.synthetic, splits, evaluation, seed, device)["mean"])
        print(f"  seed {seed}: reference {ref_acc[-1]:.4f} ({seconds:.0f}s)  "
              f"fedcond {ours_acc[-1]:.4f} ({result.seconds:.0f}s)", flush=True)
    out["reference"] = {"mean": statistics.fmean(ref_acc), "std": statistics.pstdev(ref_acc),
                        "per_seed": ref_acc, "seconds": ref_s}
    out["fedcond"] = {"mean": statistics.fmean(ours_acc), "std": statistics.pstdev(ours_acc),
                      "per_seed": ours_acc, "seconds": ours_s}
    out["difference_points"] = 100 * (out["fedcond"]["mean"] - out["reference"]["mean"])
    return out


def methods_section(
    splits: DatasetSplits,
    *,
    ipcs: list[int],
    iterations: dict[int, int],
    evaluation: EvalConfig,
    seeds: list[int],
    compile_dm: bool,
    device: str,
    matchings: tuple[str, ...] = ("mean",),
    baselines: tuple[str, ...] = ("random", "herding", "kmeans"),
    dm_init: str = "real",
    dm_layout: str = DEFAULT_LAYOUT,
    variants: tuple[str, ...] = (),
    idm_queue: int = 10,
    gm_iterations: int = 0,
    dm_reference: bool = False,
    dm_settings: dict[str, Any] | None = None,
    time_budget: float | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    finished: Collection[tuple[str, int, str]] = (),
) -> list[dict[str, Any]]:
    """DM vs the baselines at each IPC; every method made once per seed (selection / DM seed),
    each set evaluated by ``evaluation.runs`` networks; mean +- std over all seeds x runs.

    ``baselines``: ``random`` and ``herding`` coresets (real images) and ``kmeans`` (each
    class's pixel-space k-means centroids, no DM: what the start point alone gives).
    ``matchings`` picks the DM rows: ``dm`` (class means, the paper) and/or ``dm-mmd``, all
    started from ``dm_init`` (named ``dm...@init`` when it is not ``real``). ``variants`` adds
    DM rows with the IDM options (:data:`DM_VARIANTS`), class-mean matching, same start.
    ``gm_iterations`` > 0 adds a gradient-matching row (``gm``: the DSA paper's loops and pixel
    learning rate 0.1, started like DM). ``dm_reference`` adds a ``dm-reference`` row: the
    straightforward DM of :func:`reference_dm` (real init, class-shared DSA) at the DM rows'
    iterations, beside fedcond's ``dm``. ``dm_settings`` (``--dm-set``) are further
    :class:`DistillConfig` keys for every DM row (e.g. ``time_budget``, ``batch_real``); a
    row records the iterations its DM actually ran. ``time_budget`` (seconds) gives every
    iterative row (DM, its variants, ``gm``) the same wall-clock budget per set, counted from
    the start of its condense call; their iteration counts become caps and each row records the
    iterations run. ``on_row`` is called with each finished row (the script saves its JSON
    there, so a killed run keeps every finished row); rows whose ``(dataset, ipc, method)`` is
    in ``finished`` are skipped (``--resume``)."""
    if time_budget is not None and "time_budget" in (dm_settings or {}):
        raise ValueError("give the time budget once: time_budget or dm_settings['time_budget'], not both")
    budget = {} if time_budget is None else {"time_budget": time_budget}
    rows = []
    methods: list[tuple[str, str | None]] = [(b, None) for b in baselines]
    suffix = ("" if dm_init == "real" else f"@{dm_init}") + ("" if dm_layout == DEFAULT_LAYOUT else f"/{dm_layout}")
    methods += [(("dm" if m == "mean" else f"dm-{m}") + suffix, m) for m in matchings]
    if dm_reference:
        methods.append(("dm-reference", None))
    methods += [(f"dm+{v}" + suffix, "mean") for v in variants]
    if gm_iterations > 0:
        methods.append(("gm" + ("" if dm_init == "real" else f"@{dm_init}"), None))
    for ipc in ipcs:
        for method, matching in methods:
            if (splits.spec.name, ipc, method) in finished:
                print(f"  {splits.spec.name} ipc={ipc} {method}: kept from the earlier run (--resume)", flush=True)
                continue
            accuracies, per_seed, make_seconds, iterations_run = [], [], [], []
            try:
                for seed in seeds:
                    start = time.perf_counter()
                    if matching is not None:
                        options = dm_variant_options(method.split("+", 1)[1].split("@")[0].split("/")[0],
                                                     idm_queue=idm_queue) if "+" in method else {}
                        config = parse_config(DistillConfig, {
                            "ipc": ipc, "iterations": iterations[ipc], "seed": seed,
                            "compile": compile_dm and not options, "matching": matching, "init": dm_init,
                            "augment.layout": dm_layout, **(dm_settings or {}), **budget, **options})
                        result = get_condenser("dm", config, device=device).condense(splits.train)
                        syn = result.synthetic
                        iterations_run.append(int(syn.meta.get("iterations", config.iterations)))
                    elif method == "dm-reference":
                        batch_real = int((dm_settings or {}).get("batch_real", DistillConfig().batch_real))
                        syn, _ = reference_dm(splits.train, ipc=ipc, iterations=iterations[ipc], seed=seed,
                                              batch_real=batch_real, device=device)
                        iterations_run.append(iterations[ipc])
                    elif method.startswith("gm"):
                        syn = get_condenser(
                            "gm",
                            DistillConfig(ipc=ipc, iterations=gm_iterations, seed=seed, init=dm_init, lr_img=0.1,
                                          augment=AugmentConfig(layout=dm_layout), time_budget=time_budget),
                            device=device,
                        ).condense(splits.train).synthetic
                        iterations_run.append(int(syn.meta.get("iterations", gm_iterations)))
                    else:  # the loop-free condensers (kmeans, random, herding), by name
                        syn = get_condenser(method, DistillConfig(ipc=ipc, seed=seed), device=device).condense(
                            splits.train
                        ).synthetic
                    make_seconds.append(time.perf_counter() - start)
                    acc = evaluate(syn, splits, evaluation, seed, device)
                    accuracies += acc["runs"]
                    per_seed.append(acc["mean"])
            except ShortClassError as exc:
                # the method cannot make this set from this data: recorded, and the run goes on
                row = {"dataset": splits.spec.name, "ipc": ipc, "method": method, "seeds": seeds,
                       "not_possible": str(exc)}
                rows.append(row)
                if on_row is not None:
                    on_row(row)
                print(f"  {splits.spec.name} ipc={ipc} {method}: not possible ({exc})", flush=True)
                continue
            row = {
                "dataset": splits.spec.name,
                "ipc": ipc,
                "method": method,
                "iterations": (iterations[ipc] if matching is not None or method == "dm-reference"
                               else gm_iterations if method.startswith("gm") else 0),
                "init": dm_init if matching is not None else None,
                "dsa_layout": dm_layout if matching is not None else None,
                "iterations_run": iterations_run or None,
                "dm_settings": dict(dm_settings or {}) if matching is not None else None,
                "time_budget": time_budget if matching is not None or method.startswith("gm") else None,
                "dm_options": (dm_variant_options(method.split("+", 1)[1].split("@")[0].split("/")[0],
                                                  idm_queue=idm_queue)
                               if matching is not None and "+" in method else None),
                "seeds": seeds,
                "accuracy_mean": statistics.fmean(accuracies),
                "accuracy_std": statistics.pstdev(accuracies),
                "accuracy_per_seed": per_seed,
                "make_seconds": statistics.fmean(make_seconds),
                "peak_rss_gib": peak_rss_gib(),
            }
            rows.append(row)
            if on_row is not None:
                on_row(row)
            print(f"  {splits.spec.name} ipc={ipc} {method}: {100 * row['accuracy_mean']:.2f} ± "
                  f"{100 * row['accuracy_std']:.2f} (seeds {seeds})", flush=True)
    return rows


def whole_dataset_row(
    splits: DatasetSplits, *, evaluation: EvalConfig, seeds: list[int], device: str
) -> dict[str, Any]:
    """The evaluation protocol trained on the whole training split: the ceiling for any IPC.

    Uses as many networks as a methods row (``len(seeds) * evaluation.runs``), seeded alike.
    """
    start = time.perf_counter()
    accuracies: list[float] = []
    for seed in seeds:
        accuracies += evaluate_synthetic((splits.train.images, splits.train.labels), splits.test, evaluation,
                                         seed=seed, device=device).accuracies
    row = {"dataset": splits.spec.name, "ipc": len(splits.train) // splits.spec.num_classes, "method": "whole",
           "iterations": 0, "seeds": seeds, "training_images": len(splits.train),
           "accuracy_mean": statistics.fmean(accuracies), "accuracy_std": statistics.pstdev(accuracies),
           "accuracy_runs": accuracies, "make_seconds": time.perf_counter() - start, "peak_rss_gib": peak_rss_gib()}
    print(f"  {splits.spec.name} whole training set ({len(splits.train)} images): "
          f"{100 * row['accuracy_mean']:.2f} ± {100 * row['accuracy_std']:.2f}", flush=True)
    return row


def markdown(results: dict[str, Any]) -> str:
    lines = []
    if "speed" in results:
        s = results["speed"]
        lines += [f"### DM speed, {s['dataset']} IPC {s['ipc']}, batch_real {s['batch_real']}", "",
                  "| implementation | s/iteration (wall) | CPU s/iteration | speed-up (wall) | speed-up (CPU) |",
                  "|---|---|---|---|---|"]
        for name, row in s["variants"].items():
            lines.append(f"| {name} | {row['wall_s_per_it']:.2f} | {row['cpu_s_per_it']:.2f} | "
                         f"{row['speedup_wall']:.2f}x | {row['speedup_cpu']:.2f}x |")
        lines.append("")
    for key in ("equal_iterations_digits", "equal_iterations_mnist"):
        if key in results:
            e = results[key]
            lines += [f"### Equal iterations ({e['dataset']}, IPC {e['ipc']}, {e['iterations']} iterations, "
                      f"seeds {e['seeds']})", "",
                      "| implementation | test accuracy |", "|---|---|",
                      f"| reference | {100 * e['reference']['mean']:.2f} ± {100 * e['reference']['std']:.2f} |",
                      f"| fedcond | {100 * e['fedcond']['mean']:.2f} ± {100 * e['fedcond']['std']:.2f} |",
                      f"| difference | {e['difference_points']:+.2f} points |", ""]
    if results.get("methods"):
        lines += ["### DM vs coresets", "",
                  "| dataset | IPC | method | DM iterations | seeds | test accuracy | make s | peak RSS GiB |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results["methods"]:
            if "not_possible" in r:
                lines.append(f"| {r['dataset']} | {r['ipc']} | {r['method']} | – | {len(r['seeds'])} | "
                             f"not possible: {r['not_possible']} | – | – |")
                continue
            settings = ", ".join(f"{k}={v}" for k, v in (r.get("dm_settings") or {}).items())
            name = r["method"] + (f" ({settings})" if settings else "")
            iterations = (round(statistics.fmean(r["iterations_run"])) if r.get("iterations_run")
                          else r["iterations"])
            lines.append(f"| {r['dataset']} | {r['ipc']} | {name} | {iterations} | {len(r['seeds'])} | "
                         f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f} | {r['make_seconds']:.0f} | "
                         f"{r['peak_rss_gib']:.2f} |")
        if any(r["method"] == "whole" for r in results["methods"]):
            lines += ["", "`whole`: every training image (IPC column: images per class on average), same protocol; "
                      "make s is the evaluation time."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None, help="torchvision root with MNIST (omit: digits only)")
    parser.add_argument("--out", type=Path, default=Path("results/bench_dm"))
    parser.add_argument("--quick", action="store_true", help="digits only, tiny budgets (smoke test)")
    parser.add_argument("--sections", default="speed,equal,methods,whole", help="comma-separated subset")
    parser.add_argument("--whole-datasets", default="digits", help="whole section: digits, mnist or both")
    parser.add_argument("--speed-iterations", type=int, default=5)
    parser.add_argument("--equal-iterations", type=int, default=200, help="iterations for the equal-iteration check")
    parser.add_argument("--equal-seeds", type=int, default=3)
    parser.add_argument("--mnist-iterations", type=int, default=1000, help="DM iterations for MNIST IPC 10")
    parser.add_argument("--mnist-other-iterations", type=int, default=300, help="DM iterations for MNIST IPC 1 and 50")
    parser.add_argument("--digits-iterations", type=int, default=1000)
    parser.add_argument("--digits-seeds", type=int, default=3, help="selection/DM seeds per digits row")
    parser.add_argument("--mnist-seeds", type=int, default=1, help="selection/DM seeds per MNIST row")
    parser.add_argument("--datasets", default="digits,mnist",
                        help="methods section: digits, mnist, fashion-mnist, cifar10 (comma-separated)")
    parser.add_argument("--cifar-dir", type=Path, default=None,
                        help="CIFAR-10 root: torchvision's cifar-10-batches-py/ or the JPEG ImageFolder copy "
                             "(train/, test/); needed for the cifar10 rows")
    for name, (option, _) in EXTRA_DATASETS.items():
        parser.add_argument(f"--{option}-ipcs", default="10,1,50", help=f"methods section: {name} IPCs")
        parser.add_argument(f"--{option}-iterations", type=int, default=200,
                            help=f"DM iterations for {name} (every IPC)")
        parser.add_argument(f"--{option}-seeds", type=int, default=1, help=f"selection/DM seeds per {name} row")
    parser.add_argument("--dm-variants", default="",
                        help=f"methods section: extra DM rows with IDM options ({', '.join(DM_VARIANTS)})")
    parser.add_argument("--idm-queue", type=int, default=10, help="queue size of the queue/idm DM rows")
    parser.add_argument("--dm-set", action="append", default=[], metavar="KEY=VALUE",
                        help="methods section: a DistillConfig key for every DM row, e.g. time_budget=1800, "
                             "factor=2, batch_real=128 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the methods rows of OUT/bench_dm.json written by the same command and run the rest")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="methods section: equal wall-clock budget per set for every iterative row (DM, its "
                             "variants, gm); their iteration counts become caps")
    parser.add_argument("--dm-reference", action="store_true",
                        help="methods section: a dm-reference row, the straightforward per-class fp32 DM of the "
                             "speed section, at the DM rows' iterations (not with --time-budget)")
    parser.add_argument("--gm-iterations", type=int, default=0,
                        help="methods section: a gradient-matching row (gm) with this many iterations (0: none)")
    parser.add_argument("--mnist-ipcs", default="10,1,50", help="methods section: MNIST IPCs (10 runs first)")
    parser.add_argument("--digits-ipcs", default="1,10,50", help="methods section: digits IPCs")
    parser.add_argument("--dm-matchings", default="mean,mmd", help="methods section: DM rows (mean: dm, mmd: dm-mmd)")
    parser.add_argument("--dm-init", default="real", choices=INITS, help="methods section: DM start (rows dm...@INIT)")
    parser.add_argument("--dm-dsa-layout", default=DEFAULT_LAYOUT, choices=LAYOUTS,
                        help="methods section: DSA parameter sharing in DM (rows dm.../LAYOUT when not the default)")
    parser.add_argument("--baselines", default="random,herding,kmeans",
                        help="methods section: random, herding (coresets), kmeans (class centroids, no DM)")
    parser.add_argument("--eval-runs", type=int, default=3)
    parser.add_argument("--eval-epochs", type=int, default=300)
    parser.add_argument("--eval-no-dsa", action="store_true",
                        help="evaluation networks train without siamese augmentation (the protocol trains with it)")
    parser.add_argument("--no-compile", action="store_true", help="eager DM everywhere")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sections = set(args.sections.split(","))
    evaluation = EvalConfig(runs=args.eval_runs, epochs=args.eval_epochs, dsa=not args.eval_no_dsa)
    compile_dm = not args.no_compile
    if args.quick:
        evaluation = EvalConfig(runs=2, epochs=50, dsa=not args.eval_no_dsa)
        args.digits_iterations, args.equal_iterations, args.equal_seeds, args.speed_iterations = 30, 20, 1, 2
        compile_dm = False
    # shell-quoted, so that a recorded command with an empty value (--baselines '') re-runs as is
    results: dict[str, Any] = {"command": recorded_command(argv),
                               **machine_facts(),
                               "threads": torch.get_num_threads(), "device": args.device,
                               "cuda": torch.cuda.get_device_name() if args.device == "cuda" else None,
                               "evaluation": vars(evaluation), "complete": False}
    digits = load_dataset("digits")
    mnist = (None if args.data_dir is None or args.quick
             else load_dataset(DataConfig(dataset="mnist", data_dir=args.data_dir)))

    def save() -> None:
        (args.out / "bench_dm.json").write_text(json.dumps(results, indent=2))
        (args.out / "bench_dm.md").write_text(markdown(results))

    def record(row: dict[str, Any]) -> None:
        results["methods"].append(row)
        save()

    if "speed" in sections:
        print("speed:", flush=True)
        results["speed"] = speed_section(
            mnist.train if mnist else digits.train, iterations=args.speed_iterations, seed=args.seed,
            device=args.device)
        save()
    # the speed section above ran with glibc's default allocator, reference and fedcond alike;
    # from here on (training-heavy evaluation) freed CPU memory is reused, as the CLI does
    results["keep_freed_cpu_memory"] = keep_freed_cpu_memory()
    earlier = earlier_run(args.out / "bench_dm.json", results["command"]) if args.resume else None
    # the whole section's rows are made again (they are not methods rows)
    results["methods"] = [row for row in (earlier or {}).get("methods", []) if row["method"] != "whole"]
    finished = {(row["dataset"], row["ipc"], row["method"]) for row in results["methods"]}
    mnist_iters = {1: args.mnist_other_iterations, 10: args.mnist_iterations, 50: args.mnist_other_iterations}
    datasets = set(args.datasets.split(","))
    mnist_seeds = list(range(args.seed, args.seed + args.mnist_seeds))
    digits_seeds = list(range(args.seed, args.seed + (1 if args.quick else args.digits_seeds)))
    mnist_ipcs = [int(v) for v in args.mnist_ipcs.split(",") if v]
    digits_ipcs = [int(v) for v in args.digits_ipcs.split(",") if v]
    matchings = tuple(m for m in args.dm_matchings.split(",") if m)  # empty: baseline rows only
    if unknown := set(matchings) - set(MATCHINGS):
        parser.error(f"--dm-matchings: unknown {sorted(unknown)} ({', '.join(MATCHINGS)})")
    variants = tuple(v for v in args.dm_variants.split(",") if v)
    if unknown := set(variants) - set(DM_VARIANTS):
        parser.error(f"--dm-variants: unknown {sorted(unknown)} ({', '.join(DM_VARIANTS)})")
    known = ["digits", "mnist", *EXTRA_DATASETS]
    if unknown := datasets - set(known):
        parser.error(f"--datasets: unknown {sorted(unknown)} ({', '.join(known)})")
    for name, (_, folder) in EXTRA_DATASETS.items():
        if name in datasets and "methods" in sections and getattr(args, folder) is None:
            parser.error(f"--datasets {name} needs --{folder.replace('_', '-')}")
    dm_settings = overrides_from(args.dm_set)
    try:
        parse_config(DistillConfig, dm_settings)
    except ValueError as exc:
        parser.error(f"--dm-set: {exc}")
    baselines = tuple(b for b in args.baselines.split(",") if b)
    if unknown := set(baselines) - {"random", "herding", "kmeans"}:
        parser.error(f"--baselines: unknown {sorted(unknown)} (random, herding, kmeans)")
    if unknown := set(args.whole_datasets.split(",")) - {"digits", "mnist"}:
        parser.error(f"--whole-datasets: unknown {sorted(unknown)} (digits, mnist)")
    if args.time_budget is not None and "time_budget" in dm_settings:
        parser.error("--time-budget and --dm-set time_budget=...: give the budget once")
    if args.dm_reference and (args.time_budget is not None or "time_budget" in dm_settings):
        parser.error("--dm-reference runs at equal iterations and has no time budget: drop one of them")
    if args.dm_reference and (args.dm_init != "real" or args.dm_dsa_layout != "class"):
        parser.error("--dm-reference starts from real images with class-shared DSA: leave --dm-init and "
                     "--dm-dsa-layout at real and class")
    if args.dm_reference and set(dm_settings) - {"batch_real"}:
        parser.error(f"--dm-reference: the reference takes no --dm-set {sorted(set(dm_settings) - {'batch_real'})}")
    row_settings: dict[str, Any] = {  # what every methods-section row shares
        "evaluation": evaluation, "device": args.device, "matchings": matchings, "baselines": baselines,
        "dm_init": args.dm_init, "dm_layout": args.dm_dsa_layout, "variants": variants, "idm_queue": args.idm_queue,
        "gm_iterations": args.gm_iterations, "dm_reference": args.dm_reference, "dm_settings": dm_settings,
        "time_budget": args.time_budget,
        "on_row": record, "finished": finished}
    if "methods" in sections and mnist is not None and "mnist" in datasets and 10 in mnist_ipcs:
        # the headline number first: MNIST IPC 10 after --mnist-iterations iterations
        print("methods, mnist ipc 10:", flush=True)
        methods_section(mnist, ipcs=[10], iterations=mnist_iters, seeds=mnist_seeds, compile_dm=compile_dm,
                        **row_settings)
        save()
    if "equal" in sections:
        seeds = list(range(args.equal_seeds))
        print("equal iterations, digits:", flush=True)
        results["equal_iterations_digits"] = equal_iterations_section(
            digits, iterations=args.equal_iterations, evaluation=evaluation, seeds=seeds, compile_dm=False,
            device=args.device)
        save()
        if mnist is not None:
            print("equal iterations, mnist:", flush=True)
            results["equal_iterations_mnist"] = equal_iterations_section(
                mnist, iterations=args.equal_iterations, evaluation=evaluation, seeds=seeds[:1],
                compile_dm=compile_dm, device=args.device)
            save()
    if "methods" in sections and "digits" in datasets:
        print("methods, digits:", flush=True)
        methods_section(
            digits, ipcs=digits_ipcs if not args.quick else [1, 10],
            iterations=dict.fromkeys(digits_ipcs + [1, 10], args.digits_iterations), seeds=digits_seeds,
            compile_dm=False, **row_settings)
        save()
    if "methods" in sections and mnist is not None and "mnist" in datasets and set(mnist_ipcs) - {10}:
        print("methods, mnist other ipcs:", flush=True)
        methods_section(
            mnist, ipcs=[i for i in mnist_ipcs if i != 10], iterations=mnist_iters, seeds=mnist_seeds,
            compile_dm=compile_dm, **row_settings)
        save()
    for name, (option, folder) in EXTRA_DATASETS.items():
        if "methods" not in sections or name not in datasets:
            continue
        splits = load_dataset(DataConfig(dataset=name, data_dir=getattr(args, folder)))
        seeds = list(range(args.seed, args.seed + getattr(args, f"{option}_seeds")))
        for ipc in [int(v) for v in getattr(args, f"{option}_ipcs").split(",") if v]:  # saved after each
            print(f"methods, {name} ipc {ipc}:", flush=True)
            methods_section(
                splits, ipcs=[ipc], iterations={ipc: getattr(args, f"{option}_iterations")}, seeds=seeds,
                compile_dm=compile_dm, **row_settings)
            save()
    if "whole" in sections:
        print("whole training set:", flush=True)
        for name in args.whole_datasets.split(","):
            splits = digits if name == "digits" else mnist
            if splits is None:
                print(f"  {name}: skipped (no --data-dir)", flush=True)
                continue
            results["methods"].append(whole_dataset_row(
                splits, evaluation=evaluation, seeds=mnist_seeds if name == "mnist" else digits_seeds,
                device=args.device))
            save()
    results["peak_rss_gib"] = peak_rss_gib()
    results["complete"] = True
    save()
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
