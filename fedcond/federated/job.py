"""A federated job: the dataset, the :class:`FederatedConfig` and where to run/write.

One flat mapping format serves the TOML files in ``configs/``, ``fedcond simulate --set``,
Flower's ``run_config`` (``[tool.flwr.app.config]`` and ``flwr run --run-config``) and the
``ConfigRecord`` the server sends to clients:

- ``dataset``, ``data-dir``, ``download`` go to :class:`DataConfig`;
- ``device`` and ``out`` are run options;
- every other key (``strategy``, ``num-clients``, ``distill.ipc``, ``dp.epsilon`` ...) goes to
  :class:`FederatedConfig` through :func:`fedcond.config.parse_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from fedcond.config import WEIGHT_AVERAGING, ConfigError, DataConfig, FederatedConfig, flatten_config, parse_config
from fedcond.distill.matching import check_matching

__all__ = ["DEMO_BASELINE_ROUNDS", "DEMO_JOB", "STRATEGIES", "FederatedJob", "job_from_mapping", "job_to_mapping"]

#: FedCond and the weight-averaging baselines of :data:`fedcond.federated.baselines.BASELINES`
STRATEGIES = ("fedcond", *WEIGHT_AVERAGING)

# The default demo (``fedcond simulate`` with no argument, ``flwr run .``, configs/demo.toml):
# digits, 10 clients, Dirichlet(0.1), FedCond one-shot; compared with FedAvg over 20 rounds.
DEMO_JOB: dict[str, Any] = {
    "dataset": "digits",
    "strategy": "fedcond",
    "num_clients": 10,
    "partition": "dirichlet",
    "alpha": 0.1,
    "rounds": 1,
    "local_epochs": 1,
    "server_epochs": 300,
    "distill.ipc": 10,
    "distill.iterations": 200,
    "distill.init": "noise",  # private by default: no client's start set holds a real image
    "distill.mixed_precision": False,  # the documented demo numbers are fp32 (configs/demo.toml)
}
DEMO_BASELINE_ROUNDS = 20
_DATA_KEYS = {"dataset": "dataset", "data_dir": "data_dir", "download": "download"}
_RUN_KEYS = ("device", "out", "resume")
_IGNORED = ("server_round",)  # injected into train configs by Flower's strategies
#: ``distill.seed`` value (and its absence) meaning "the job's ``seed``": pyproject.toml's
#: run config declares the key so that ``flwr run --run-config distill.seed=N`` can set it
FOLLOW_SEED = -1


@dataclass(frozen=True)
class FederatedJob:
    """Everything a federated run needs, typed.

    Attributes
    ----------
    data : DataConfig
        The dataset (clients partition its training split; the server tests on its test split).
    federated : FederatedConfig
        Strategy, partitioning, client condensation and server training settings.
    device : str
        ``auto``, ``cpu`` or ``cuda``, for clients and server alike.
    out : Path | None
        Run folder for ``metrics.json`` (``flwr run`` path; the CLI passes ``--out``).
    resume : bool
        ``flwr run`` only: continue the killed run in ``out`` after its last checkpointed round
        (``fedcond simulate`` has ``--resume``).
    """

    data: DataConfig = field(default_factory=DataConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    device: str = "auto"
    out: Path | None = None
    resume: bool = False


def _key(raw: str) -> str:
    return str(raw).strip().replace("-", "_")


def _dp_switched_off(epsilon: Any) -> bool:
    try:
        return epsilon is not None and not isinstance(epsilon, bool) and float(epsilon) == 0.0
    except (TypeError, ValueError):
        return False  # not a number: parse_config names the problem


def job_from_mapping(values: Mapping[str, Any] | None) -> FederatedJob:
    """Parse a flat (dotted, hyphen-or-underscore) mapping into a :class:`FederatedJob`.

    ``distill.seed`` follows ``seed`` when absent or :data:`FOLLOW_SEED` (-1). ``dp.epsilon``
    0 means no DP: every ``dp.*`` key is then dropped (``pyproject.toml`` declares them so that
    ``flwr run --run-config 'dp.epsilon=8'`` can turn DP on).

    Raises
    ------
    ConfigError
        For an unknown key, a wrong type, an unknown strategy, a value out of range, or
        ``dp.*`` keys for a strategy without DP.
    """
    data: dict[str, Any] = {}
    fed: dict[str, Any] = {}
    run: dict[str, Any] = {}
    for raw, value in (values or {}).items():
        key = _key(raw)
        if key in _DATA_KEYS:
            data[_DATA_KEYS[key]] = value
        elif key in _RUN_KEYS:
            run[key] = value
        elif key in _IGNORED:
            continue
        else:
            fed[key] = value
    if _dp_switched_off(fed.get("dp.epsilon")):
        # Flower's run config declares every key it accepts, so pyproject.toml declares dp.* with
        # epsilon 0 = "no DP"; `--run-config 'dp.epsilon=8'` then turns DP-DM on
        fed = {k: v for k, v in fed.items() if not k.startswith("dp.")}
    if fed.get("distill.seed") in (None, FOLLOW_SEED, str(FOLLOW_SEED)):
        fed["distill.seed"] = fed.get("seed", 0)  # DM follows the job's seed unless set on its own
    if data.get("data_dir") in ("", None):
        data.pop("data_dir", None)
    federated = parse_config(FederatedConfig, fed)
    if federated.strategy not in STRATEGIES:
        raise ConfigError(f"config key 'strategy': {federated.strategy!r} is not one of {', '.join(STRATEGIES)}")
    try:
        check_matching(federated.distill.matching, private=federated.dp is not None)
    except ValueError as exc:
        raise ConfigError(f"config key 'distill.matching': {exc}") from exc
    device = str(run.get("device", "auto"))
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"config key 'device': {device!r} is not one of auto, cpu, cuda")
    out = run.get("out")
    resume = run.get("resume", False)
    if not isinstance(resume, bool):
        raise ConfigError(f"config key 'resume': expected true or false, got {resume!r}")
    if out is not None and not isinstance(out, (str, PurePath)):
        raise ConfigError(f"config key 'out': expected a folder path, got {out!r}")
    out_path = Path(out) if out not in (None, "") else None
    if resume and out_path is None:
        raise ConfigError("config key 'resume': true needs 'out', the folder of the run to continue")
    return FederatedJob(
        data=parse_config(DataConfig, data),
        federated=federated,
        device=device,
        out=out_path,
        resume=resume,
    )


def job_to_mapping(job: FederatedJob) -> dict[str, Any]:
    """The flat mapping :func:`job_from_mapping` reads back (``None`` values are left out).

    Values are str/int/float/bool only, so the result fits a Flower ``ConfigRecord``.
    """
    flat: dict[str, Any] = {f"{k}": v for k, v in flatten_config(job.federated).items()}
    if job.federated.dp is None:
        flat.pop("dp", None)
    flat["dataset"] = job.data.dataset
    flat["download"] = job.data.download
    if job.data.data_dir is not None:
        flat["data_dir"] = str(job.data.data_dir)
    flat["device"] = job.device
    if job.out is not None:
        flat["out"] = str(job.out)
    if job.resume:
        flat["resume"] = True
    return {k: v for k, v in flat.items() if v is not None}
