"""The client policy: what a node agrees to do with its data, whatever the server asks.

A federated client receives its job in the server's train message. Under a hostile or careless
server that message could ask for anything: real-image init with zero iterations (an upload of
raw training images), DP switched off, a noise seed the server then knows, another data folder.
The :class:`ClientPolicy` is the node's own answer, read from the node's configuration (never
from the server): every request is checked against it by :func:`check_request` and a request
that breaks a rule is refused with a :class:`PolicyViolation` that names the rule. The server's
config can tighten nothing and loosen nothing.

Sources of a policy, in order: the policy a simulation driver hands to every simulated client
(``fedcond simulate --client-policy FILE``), the TOML file named by the node config key
``policy`` (``flower-supernode --node-config "policy='client-policy.toml'"``), else
:data:`DEFAULT_POLICY`, which is private: noise init only and a release gate on every upload.

Example policy file::

    allowed_init = ["noise"]          # real, herding and kmeans start from real images
    min_iterations = 100
    serve = ["condense", "evaluate"]  # no FedAvg/FedProx model updates from this node
    accept_server_embedder = false    # no server-chosen embedding network without DP

    [dp]
    required = true
    max_epsilon = 8.0                 # per upload
    budget_epsilon = 20.0             # over the node's lifetime, all runs
    budget_delta = 1e-5
    ledger = "dp-ledger.json"         # relative to the policy file

    [gate]
    action = "withhold"               # or "replace", "refuse"

    [data]
    dataset = "mnist"
    data_dir = "/srv/data"

    [checkpoints]
    folder = "condense-checkpoints"   # resumable condensation state, relative to the policy file
    every = 20                        # iterations between checkpoints
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcond.config import ConfigError, parse_config
from fedcond.data.registry import available_datasets

__all__ = [
    "ACTIONS",
    "DEFAULT_POLICY",
    "CheckpointPolicy",
    "GATE_ACTIONS",
    "INIT_KINDS",
    "PRIVATE_INITS",
    "ClientPolicy",
    "DataSourcePolicy",
    "DPPolicy",
    "GatePolicy",
    "PolicyError",
    "PolicyViolation",
    "DEFAULT_MAX_EPSILON",
    "DEFAULT_SERVE",
    "check_iterations_run",
    "check_request",
    "load_node_policy",
    "load_policy",
    "policy_from_mapping",
    "simulated_client_policy",
]

#: Message actions a node can serve: FedCond's condensation, FedAvg/FedProx local training
#: (which sends model updates) and evaluation of the global model on local data.
ACTIONS = ("condense", "train", "evaluate")
#: What a node serves unless its policy says otherwise. ``train`` is opt-in: a FedAvg/FedProx
#: update passes no release gate, and a server that picks the model, the batch size and a
#: one-image partition reads the image back out of the first layer's update.
DEFAULT_SERVE = ("condense", "evaluate")
#: The largest epsilon per upload when a policy sets none. The release gate tests only non-DP
#: uploads, so without a cap a request for a huge epsilon (noise that protects nothing) would
#: pass ungated; past about 10 the DP literature calls the guarantee weak.
DEFAULT_MAX_EPSILON = 10.0
#: Init kinds of the condenser; every one but ``noise`` starts from real images.
INIT_KINDS = ("real", "herding", "kmeans", "noise")
#: Inits that put no real image into the start set.
PRIVATE_INITS = ("noise",)
#: What the release gate does with a set holding near-copies of training images.
GATE_ACTIONS = ("withhold", "replace", "refuse")


class PolicyError(ConfigError):
    """A policy file is missing, malformed or contradictory (raised when the node starts)."""


class PolicyViolation(Exception):
    """A request breaks a rule of the client's policy.

    Attributes
    ----------
    rule : str
        The policy key that refuses the request (e.g. ``allowed_init``, ``dp.budget_epsilon``).
    reason : str
        What was asked and what the rule allows.
    """

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"policy rule {rule!r}: {reason}")
        self.rule = rule
        self.reason = reason


@dataclass(frozen=True)
class DPPolicy:
    """Differential-privacy rules of a node.

    Attributes
    ----------
    required : bool
        Refuse any condensation request without DP.
    max_epsilon : float | None
        Largest epsilon one upload (one run of the federated job) may spend; unset,
        :data:`DEFAULT_MAX_EPSILON` (:attr:`upload_epsilon_cap`).
    budget_epsilon, budget_delta : float | None, float
        The node's lifetime budget over every run it serves (``budget_epsilon`` needs
        ``ledger``); ``budget_delta`` is also the largest delta a request may ask.
    ledger : Path | None
        The persistent DP ledger file (:class:`fedcond.privacy.ledger.PrivacyLedger`); a
        relative path is resolved against the policy file's folder.
    honour_server_noise_seed : bool
        Accept a server-supplied ``dp.noise_seed`` (which lets the server regenerate the noise).
    """

    required: bool = False
    max_epsilon: float | None = None
    budget_epsilon: float | None = None
    budget_delta: float = 1e-5
    ledger: Path | None = None
    honour_server_noise_seed: bool = False

    @property
    def upload_epsilon_cap(self) -> float:
        """The largest epsilon one upload may spend: ``max_epsilon``, else :data:`DEFAULT_MAX_EPSILON`."""
        return DEFAULT_MAX_EPSILON if self.max_epsilon is None else self.max_epsilon


@dataclass(frozen=True)
class GatePolicy:
    """The release gate run on every non-DP upload (:mod:`fedcond.privacy.gate`).

    Attributes
    ----------
    enabled : bool
        Test each synthetic set against the node's own data before it leaves.
    action : str
        ``withhold`` (flagged images are left out of the upload), ``replace`` (flagged images
        are reset to noise, the set is condensed again and tested again; images still flagged
        are withheld) or ``refuse`` (no upload when any image is flagged).
    quantile : float
        Fresh-sample false-positive rate of the near-copy threshold.
    feature_space : bool
        Also compare in the feature space of a fixed random ConvNet (catches rescaled copies).
    """

    enabled: bool = True
    action: str = "withhold"
    quantile: float = 0.01
    feature_space: bool = True


@dataclass(frozen=True)
class DataSourcePolicy:
    """The node's own data (its training split is what the node condenses or trains on)."""

    dataset: str | None = None
    data_dir: Path | None = None


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where the node keeps its condensation checkpoints (its own disk, never the server's).

    A node killed during a condensation (a SuperNode restart, a killed simulation) continues
    it from the last checkpoint when the same request arrives again: same job settings, same
    data, same start images, same embedding network (the file name is a digest of them). The
    checkpoints hold synthetic images and optimiser state, not real images; under DP the ledger
    is charged for every iteration the released set ran, those before the restart included.

    Attributes
    ----------
    folder : Path | None
        The checkpoint folder (``None``: no checkpoints); a relative path is resolved against
        the policy file's folder. Simulated nodes sharing a policy share the folder: their
        requests differ (data and seed), and so do their file names.
    every : int
        Iterations between checkpoints (one is also written at the end of a run).
    """

    folder: Path | None = None
    every: int = 20


@dataclass(frozen=True)
class ClientPolicy:
    """A node's rules, checked against every request (see the module docstring).

    Attributes
    ----------
    allowed_init : tuple[str, ...]
        Condenser init kinds the node accepts.
    min_iterations : int
        Fewest condensation iterations the node accepts.
    serve : tuple[str, ...]
        Message actions the node answers (:data:`ACTIONS`; default :data:`DEFAULT_SERVE`, without
        FedAvg/FedProx ``train``).
    accept_server_embedder : bool
        Condense with a model the server sends as DM's embedding network, without DP. Off by
        default: the network decides which directions of the images the upload matches, and a
        near-linear one makes the upload an exact projection of the training images that the
        release gate cannot see (two uploads on complementary projections give the images back).
        A DP request may carry one: the guarantee holds for any network.
    dp, gate, data, checkpoints
        See :class:`DPPolicy`, :class:`GatePolicy`, :class:`DataSourcePolicy`,
        :class:`CheckpointPolicy`.
    """

    allowed_init: tuple[str, ...] = PRIVATE_INITS
    min_iterations: int = 0
    serve: tuple[str, ...] = DEFAULT_SERVE
    accept_server_embedder: bool = False
    dp: DPPolicy = field(default_factory=DPPolicy)
    gate: GatePolicy = field(default_factory=GatePolicy)
    data: DataSourcePolicy = field(default_factory=DataSourcePolicy)
    checkpoints: CheckpointPolicy = field(default_factory=CheckpointPolicy)

    def __post_init__(self) -> None:
        _check_policy(self)

    @property
    def permissive(self) -> bool:
        """Whether an upload may carry training images: a real-data init, no release gate or a
        server-chosen embedding network allowed (without required DP), or FedAvg/FedProx model
        updates served (they pass no gate)."""
        real_init = any(init not in PRIVATE_INITS for init in self.allowed_init)
        serves_updates = "train" in self.serve and not self.dp.required  # required DP refuses train
        return serves_updates or (
            not self.dp.required and (real_init or not self.gate.enabled or self.accept_server_embedder)
        )

    def as_dict(self) -> dict[str, Any]:
        """The policy as JSON-ready values (for ``metrics.json``), plus ``permissive``."""

        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, tuple):
                return list(value)
            return value

        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                out[f.name] = {g.name: plain(getattr(value, g.name)) for g in dataclasses.fields(value)}
            else:
                out[f.name] = plain(value)
        out["permissive"] = self.permissive
        return out


def _check_policy(policy: ClientPolicy) -> None:
    """Refuse contradictory or unknown rules: a policy is never silently weaker than written."""
    unknown = [i for i in policy.allowed_init if i not in INIT_KINDS]
    if unknown:
        raise PolicyError(f"policy key 'allowed_init': unknown init kind(s) {unknown}; choose from {list(INIT_KINDS)}")
    if not policy.allowed_init:
        raise PolicyError("policy key 'allowed_init' is empty: the node would refuse every condensation")
    if not policy.serve:
        raise PolicyError("policy key 'serve' is empty: the node would refuse every request")
    if policy.dp.required and "condense" not in policy.serve:
        raise PolicyError(
            f"policy keys 'serve' ({list(policy.serve)}) and 'dp.required' contradict: dp.required refuses "
            "train and evaluate, so the node would refuse every request"
        )
    unknown = [a for a in policy.serve if a not in ACTIONS]
    if unknown:
        raise PolicyError(f"policy key 'serve': unknown action(s) {unknown}; choose from {list(ACTIONS)}")
    if policy.min_iterations < 0:
        raise PolicyError(f"policy key 'min_iterations' must be >= 0, got {policy.min_iterations}")
    dp = policy.dp
    for key, value in (("dp.max_epsilon", dp.max_epsilon), ("dp.budget_epsilon", dp.budget_epsilon)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise PolicyError(
                f"policy key {key!r} must be a positive epsilon, got {value}"
                + (" (with dp.required = true no run could be served)" if dp.required else "")
            )
    if not 0 < dp.budget_delta < 1:
        raise PolicyError(f"policy key 'dp.budget_delta' must lie in (0, 1), got {dp.budget_delta}")
    if dp.budget_epsilon is not None and dp.ledger is None:
        raise PolicyError(
            "policy key 'dp.budget_epsilon' needs 'dp.ledger' (a file on the node's disk): a lifetime "
            "budget kept in memory would start afresh with every restart"
        )
    if dp.max_epsilon is not None and dp.budget_epsilon is not None and dp.max_epsilon > dp.budget_epsilon:
        raise PolicyError(
            f"policy keys 'dp.max_epsilon' ({dp.max_epsilon}) and 'dp.budget_epsilon' ({dp.budget_epsilon}) "
            "contradict: one upload may not spend more than the lifetime budget"
        )
    gate = policy.gate
    if gate.action not in GATE_ACTIONS:
        raise PolicyError(f"policy key 'gate.action': {gate.action!r} is not one of {', '.join(GATE_ACTIONS)}")
    if not 0 < gate.quantile < 1:
        raise PolicyError(f"policy key 'gate.quantile' must lie in (0, 1), got {gate.quantile}")
    data = policy.data
    if data.dataset is not None and data.dataset not in available_datasets():
        raise PolicyError(
            f"policy key 'data.dataset': unknown dataset {data.dataset!r}; choose from {sorted(available_datasets())}"
        )
    if data.data_dir is not None and data.dataset is None:
        raise PolicyError("policy key 'data.data_dir' needs 'data.dataset' (which dataset the folder holds)")
    if policy.checkpoints.every < 1:
        raise PolicyError(f"policy key 'checkpoints.every' must be >= 1, got {policy.checkpoints.every}")


#: The policy of a node that names none: noise init only, the release gate on every upload, DP
#: requests up to epsilon 10, no FedAvg/FedProx model updates.
DEFAULT_POLICY = ClientPolicy()


def simulated_client_policy(policy: ClientPolicy | None, *, strategy: str) -> ClientPolicy:
    """The policy of a simulation's clients: ``policy`` when the run names one, else the default.

    A simulation runs both sides on one machine, and a weight-averaging baseline (FedAvg,
    FedProx, ...) cannot run at all on nodes that refuse ``train``: when the run names no policy,
    its clients serve ``train`` as well, and the policy is then permissive (the run says so).
    A named policy is used as written, so a node file without ``train`` refuses the baseline.
    """
    if policy is not None:
        return policy
    if strategy == "fedcond":
        return DEFAULT_POLICY
    return dataclasses.replace(DEFAULT_POLICY, serve=ACTIONS)


def policy_from_mapping(values: dict[str, Any], *, base_dir: Path | None = None) -> ClientPolicy:
    """Build a :class:`ClientPolicy` from a (nested or dotted) mapping; relative paths join ``base_dir``.

    Raises
    ------
    PolicyError
        For an unknown key, a wrong type or a contradictory rule.
    """
    try:
        policy = parse_config(ClientPolicy, values)
    except PolicyError:
        raise
    except ConfigError as exc:
        raise PolicyError(f"client policy: {exc}") from exc
    if base_dir is not None:
        ledger = policy.dp.ledger
        if ledger is not None and not ledger.is_absolute():
            policy = dataclasses.replace(policy, dp=dataclasses.replace(policy.dp, ledger=base_dir / ledger))
        data_dir = policy.data.data_dir
        if data_dir is not None and not data_dir.is_absolute():
            policy = dataclasses.replace(policy, data=dataclasses.replace(policy.data, data_dir=base_dir / data_dir))
        folder = policy.checkpoints.folder
        if folder is not None and not folder.is_absolute():
            policy = dataclasses.replace(
                policy, checkpoints=dataclasses.replace(policy.checkpoints, folder=base_dir / folder)
            )
    return policy


def load_policy(path: str | Path) -> ClientPolicy:
    """Read a client-policy TOML file (relative paths in it are relative to its folder).

    Raises
    ------
    PolicyError
        When the file is missing, not TOML, or holds an unknown key, a wrong type or a
        contradiction (the message names the key).
    """
    from fedcond.config import load_toml

    path = Path(path).expanduser()
    try:
        values = load_toml(path)
    except ConfigError as exc:
        raise PolicyError(f"client policy: {exc}") from exc
    return policy_from_mapping(values, base_dir=path.resolve().parent)


def load_node_policy(path: str | Path) -> ClientPolicy:
    """A node's policy file as the node checks it before serving: :func:`load_policy`, and the
    DP ledger's folder writable (:func:`~fedcond.privacy.ledger.check_ledger_writable`).

    Raises
    ------
    PolicyError
        As :func:`load_policy`.
    fedcond.privacy.ledger.LedgerError
        When the node cannot create or write the ledger's folder.
    """
    from fedcond.privacy.ledger import check_ledger_writable

    policy = load_policy(path)
    if policy.dp.ledger is not None:  # with or without a [data] table: per-partition ledgers share the folder
        check_ledger_writable(policy.dp.ledger)
    return policy


def check_request(
    policy: ClientPolicy,
    *,
    action: str,
    init: str | None = None,
    iterations: int | None = None,
    dp_epsilon: float | None = None,
    dp_delta: float | None = None,
    server_noise_seed: bool = False,
    server_embedder: bool = False,
) -> None:
    """Refuse a request that breaks ``policy``.

    Parameters
    ----------
    action : str
        ``condense``, ``train`` or ``evaluate``.
    init, iterations : str | None, int | None
        The requested condensation start and length (``condense`` only).
    dp_epsilon, dp_delta : float | None
        The requested DP budget of the run (``None``: no DP).
    server_noise_seed : bool
        Whether the request carries a server-supplied ``dp.noise_seed``.
    server_embedder : bool
        Whether the request carries a model for DM's embedding network.

    Raises
    ------
    PolicyViolation
        Naming the first rule the request breaks.
    """
    if action not in policy.serve:
        raise PolicyViolation("serve", f"this node does not serve {action!r} requests (it serves {list(policy.serve)})")
    dp = policy.dp
    if action == "train" and dp.required:
        raise PolicyViolation(
            "dp.required", "this node releases only differentially private sets; a model update is not one"
        )
    if action == "evaluate" and dp.required:
        raise PolicyViolation(
            "dp.required",
            "this node releases only differentially private results; an evaluation reports a server model's exact "
            "accuracy and example count on the node's data (a membership oracle)",
        )
    if action != "condense":
        return
    if dp_epsilon is None and dp.required:
        raise PolicyViolation(
            "dp.required", "this node uploads only differentially private sets; the request has no DP"
        )
    if dp_epsilon is not None and dp_epsilon > dp.upload_epsilon_cap:
        raise PolicyViolation(
            "dp.max_epsilon",
            f"the request asks epsilon {dp_epsilon:g} per upload, this node allows at most {dp.upload_epsilon_cap:g}",
        )
    if dp_epsilon is not None and dp_delta is not None and dp_delta > dp.budget_delta:
        raise PolicyViolation(
            "dp.budget_delta",
            f"the request asks delta {dp_delta:g}, this node allows at most {dp.budget_delta:g}",
        )
    if server_noise_seed and not dp.honour_server_noise_seed:
        raise PolicyViolation(
            "dp.honour_server_noise_seed",
            "the request sets dp.noise_seed: noise the server can regenerate protects nothing; this node draws its own",
        )
    if server_embedder and dp_epsilon is None and not policy.accept_server_embedder:
        raise PolicyViolation(
            "accept_server_embedder",
            "the request sends a model to condense with and has no DP: a network the server chooses can make "
            "the upload a projection of the training images that the release gate cannot see",
        )
    # DP-DM always starts from noise, whatever init the request names
    effective_init = "noise" if dp_epsilon is not None else init
    if effective_init is not None and effective_init not in policy.allowed_init:
        raise PolicyViolation(
            "allowed_init",
            f"the request asks init {effective_init!r}, this node allows {list(policy.allowed_init)} "
            "(real-data inits start the upload from training images)",
        )
    if iterations is not None and iterations < policy.min_iterations:
        raise PolicyViolation(
            "min_iterations",
            f"the request asks {iterations} iterations, this node requires at least {policy.min_iterations}",
        )


def check_iterations_run(policy: ClientPolicy, *, iterations_run: int) -> None:
    """Refuse an upload whose condensation ran fewer iterations than ``min_iterations``.

    The request's ``iterations`` is checked before the run (:func:`check_request`); a run can
    still stop earlier (a server-set ``time_budget``), so the node checks what really ran.

    Raises
    ------
    PolicyViolation
        Naming ``min_iterations``.
    """
    if iterations_run < policy.min_iterations:
        raise PolicyViolation(
            "min_iterations",
            f"the condensation stopped after {iterations_run} iterations (the request's time budget), "
            f"this node requires at least {policy.min_iterations}",
        )
