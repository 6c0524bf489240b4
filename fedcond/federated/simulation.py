"""Run a :class:`FederatedJob` on Flower's Simulation Engine (Ray backend), in-process.

This is the driver behind ``fedcond simulate`` and the benchmark. The ServerApp runs
:func:`run_federated` in a thread of this process (so the report comes back as an object);
every virtual SuperNode runs the fedcond ClientApp (:func:`~fedcond.federated.client_app.build_client_app`,
with the run's client policy) in a Ray actor. A simulated attack (``attack``) puts the honest
app behind an attack mod on the first ``attackers`` partitions
(:func:`fedcond.federated.attacks.attacked_client_app`); only this driver does that.

Resources: each client asks for ``cpus_per_client`` CPUs out of the ``num_cpus`` given to Ray,
so at most ``num_cpus // cpus_per_client`` clients run at once whatever their number (memory
stays bounded: actors are reused); with CUDA each client also gets ``1 / concurrency`` of a GPU.
Flower and Ray keep their state under ``FLWR_HOME``/``RAY_TMPDIR`` (the CLI points both into
the run folder) and Flower's runtime dependency installation is disabled.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedcond.federated.attacks import AttackConfig, attacked_client_app
from fedcond.federated.checkpoint import RunCheckpoint
from fedcond.federated.client import load_splits
from fedcond.federated.client_app import build_client_app
from fedcond.federated.flower_logging import without_run_simulation_notice
from fedcond.federated.inprocess import InProcessGrid, task_identity
from fedcond.federated.job import FederatedJob
from fedcond.federated.policy import ClientPolicy, simulated_client_policy
from fedcond.federated.server_app import FederatedReport, run_federated

__all__ = ["ENGINES", "SimulationError", "backend_config_for", "simulate", "simulate_in_process"]

ENGINES = ("ray", "inprocess")

logger = logging.getLogger(__name__)

# AF_UNIX socket paths are limited to 107 bytes; Ray nests ~60 more characters under its temp dir
_MAX_RAY_TMPDIR = 45


class SimulationError(RuntimeError):
    """The simulation did not produce a report (the ServerApp failed)."""


def backend_config_for(*, num_cpus: int, cpus_per_client: int, use_gpu: bool) -> dict[str, Any]:
    """Ray backend settings: bounded client concurrency, GPU fractions when CUDA is present."""
    concurrency = max(1, num_cpus // max(1, cpus_per_client))
    resources: dict[str, Any] = {"num_cpus": cpus_per_client, "num_gpus": (1.0 / concurrency) if use_gpu else 0.0}
    init_args: dict[str, Any] = {
        "num_cpus": num_cpus,
        "logging_level": "ERROR",
        # client log lines ("fedcond client: partition 3/10 round 1: ... in 12.3s", a skipped
        # class) are the only progress while a round runs: forward them to the console
        "log_to_driver": True,
        "include_dashboard": False,
    }
    if use_gpu:
        init_args["num_gpus"] = 1
    return {"client_resources": resources, "init_args": init_args}


def _ray_tmpdir() -> tuple[str | None, Path | None]:
    """A temp dir for Ray short enough for socket paths (linked from RAY_TMPDIR when too long)."""
    wanted = os.environ.get("RAY_TMPDIR")
    if not wanted:
        return None, None
    Path(wanted).mkdir(parents=True, exist_ok=True)
    if len(wanted) <= _MAX_RAY_TMPDIR:
        return wanted, None
    short = Path(tempfile.mkdtemp(prefix="fcray-"))
    link = Path(wanted) / "ray-session"  # points at the latest session's short temp dir
    if link.is_symlink():
        link.unlink()
    if not link.exists():
        link.symlink_to(short, target_is_directory=True)
    return str(short), short


def simulate_in_process(
    job: FederatedJob,
    *,
    policy: ClientPolicy | None = None,
    attack: AttackConfig | None = None,
    checkpoint: RunCheckpoint | None = None,
    on_round: Callable[[FederatedReport], None] | None = None,
) -> FederatedReport:
    """Run ``job`` with :class:`InProcessGrid`: sequential clients, no Ray (tests, CPU benchmarks).

    ``policy`` is every simulated client's policy (``None``: :func:`simulated_client_policy`);
    ``attack``, ``checkpoint`` and ``on_round`` as for :func:`simulate`.
    """
    policy = simulated_client_policy(policy, strategy=job.federated.strategy)
    client_app = attacked_client_app(build_client_app(policy), attack)
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    with task_identity():
        return run_federated(
            InProcessGrid(client_app, num_nodes=job.federated.num_clients),
            job,
            attack=attack,
            checkpoint=checkpoint,
            on_round=on_round,
        )


def simulate(
    job: FederatedJob,
    *,
    engine: str = "ray",
    num_cpus: int | None = None,
    cpus_per_client: int = 1,
    max_concurrent_clients: int = 2,
    policy: ClientPolicy | None = None,
    attack: AttackConfig | None = None,
    checkpoint: RunCheckpoint | None = None,
    on_round: Callable[[FederatedReport], None] | None = None,
) -> FederatedReport:
    """Simulate ``job`` with ``job.federated.num_clients`` virtual SuperNodes.

    Parameters
    ----------
    job : FederatedJob
        The federated job (strategy, dataset, partitions, settings).
    engine : str
        ``ray`` (Flower's Simulation Engine) or ``inprocess`` (:func:`simulate_in_process`).
    num_cpus : int | None
        CPUs handed to Ray; default ``min(os.cpu_count(), max_concurrent_clients * cpus_per_client)``.
    cpus_per_client : int
        CPUs each client reserves (Ray limits concurrency with it).
    max_concurrent_clients : int
        Upper bound on clients running at once (memory budget).
    policy : ClientPolicy | None
        The client policy of every simulated node (``None``: the default, private policy, which
        serves ``train`` too when the job's strategy averages weights; :func:`simulated_client_policy`).
    attack : AttackConfig | None
        Simulated hostile clients: partitions ``0..attackers-1`` run ``attack.kind``.
    checkpoint : RunCheckpoint | None
        Per-round checkpoint; a checkpoint holding rounds of this job is continued.
    on_round : Callable | None
        Called with the partial report after every round.

    Raises
    ------
    ValueError, FileNotFoundError
        Bad settings or missing data, before Ray starts (the dataset is loaded once up front;
        the server would load it anyway), or raised by the ServerApp.
    SimulationError
        When the ServerApp failed otherwise or returned nothing.
    """
    load_splits(job.data)  # a missing dataset is one clear error now, not minutes later in Ray
    if engine == "inprocess":
        return simulate_in_process(job, policy=policy, attack=attack, checkpoint=checkpoint, on_round=on_round)
    if engine != "ray":
        raise ValueError(f"unknown simulation engine {engine!r}; choose one of {', '.join(ENGINES)}")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    # Ray folds log lines that differ only in numbers into "[repeated Nx across cluster]": that
    # would hide most clients' progress lines (set RAY_DEDUP_LOGS=1 to have it back)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if num_cpus is None:
        num_cpus = max(1, min(os.cpu_count() or 1, max_concurrent_clients * cpus_per_client))
    use_gpu = torch.cuda.is_available() and job.device != "cpu"
    backend_config = backend_config_for(num_cpus=num_cpus, cpus_per_client=cpus_per_client, use_gpu=use_gpu)
    tmpdir, cleanup = _ray_tmpdir()
    if tmpdir is not None:
        backend_config["init_args"]["_temp_dir"] = tmpdir
    holder: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            holder["report"] = run_federated(grid, job, attack=attack, checkpoint=checkpoint, on_round=on_round)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            holder["error"] = exc
            raise

    logger.info(
        "simulating %s: %d clients, Ray with %d CPUs, %s per client",
        job.federated.strategy,
        job.federated.num_clients,
        num_cpus,
        backend_config["client_resources"],
    )
    try:
        # Flower 1.42's only Python entry point to its Simulation Engine; its deprecation notice
        # speaks to us, not to the user (why: fedcond/federated/flower_logging.py)
        with without_run_simulation_notice():
            run_simulation(
                server_app=server_app,
                client_app=attacked_client_app(
                    build_client_app(simulated_client_policy(policy, strategy=job.federated.strategy)), attack
                ),
                num_supernodes=job.federated.num_clients,
                backend_name="ray",
                backend_config=backend_config,
            )
    finally:
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
    if isinstance(holder.get("error"), (ValueError, FileNotFoundError)):
        raise holder["error"]  # bad input stays a one-line error for the caller
    if "error" in holder:
        raise SimulationError(f"the federated run failed: {holder['error']}") from holder["error"]
    if "report" not in holder:
        raise SimulationError("the simulation ended without a report (see the Flower log above)")
    return holder["report"]
