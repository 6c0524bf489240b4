"""Typed, frozen configuration objects and the one place where config keys are parsed.

CLI flags, TOML files and Flower's flat ``run_config`` all end up in :func:`parse_config`,
which turns a (possibly nested or dotted) mapping into the dataclasses below, coercing
values to the annotated types and rejecting unknown keys with a message that names them.
Everything below the CLI receives these typed objects, never an argparse namespace.

The configs check themselves when built, however they are built (:func:`parse_config`, a
direct constructor call or ``dataclasses.replace``): a closed choice is a ``Literal`` type
(:func:`choices_of` gives its values to the CLI and to the modules that dispatch on it), a
numeric field declares its allowed interval with :func:`ranged`, and rules that tie several
fields together live in the class's ``_check_rules``. A value out of range is a
:class:`ConfigError` naming the key, before any data is read.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

__all__ = [
    "AugmentConfig",
    "AuditConfig",
    "ConfigError",
    "ContinualConfig",
    "DataConfig",
    "DistillConfig",
    "DPConfig",
    "EvalConfig",
    "FederatedConfig",
    "MAX_SEED",
    "Range",
    "RobustConfig",
    "STRATEGY_KEYS",
    "WEIGHT_AVERAGING",
    "choices_of",
    "load_toml",
    "offset_seed",
    "ranged",
    "parse_config",
    "flatten_config",
]


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key."""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Range:
    """The allowed interval of a numeric config field; ``None`` leaves that side open.

    ``ge``/``gt`` bound from below (inclusive/exclusive), ``le``/``lt`` from above: the bounds
    of what the value means (a fraction lies in ``[0, 1]``). ``limit`` is an inclusive upper
    bound that guards the run instead: the largest value it can take without overflowing torch
    or NumPy or asking for absurd resources (the ``MAX_*`` constants below).
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    limit: float | None = None

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the interval (NaN never does)."""
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
            and (self.limit is None or value <= self.limit)
        )

    def describe(self, value: float | None = None) -> str:
        """What a value must do, e.g. ``be >= 1`` or ``lie in (0, 1]``.

        Without ``value``, the whole interval. Given the ``value`` that failed, the ``limit``
        is named only when the value exceeds it: ``--ipc 0`` is told ``be >= 1``, ``--ipc 1e20``
        ``lie in [1, 10000]``.
        """
        le = self.le
        if self.limit is not None and (value is None or value > self.limit):
            le = self.limit if le is None else min(le, self.limit)
        lows = [f"[{_number(self.ge)}"] if self.ge is not None else []
        lows += [f"({_number(self.gt)}"] if self.gt is not None else []
        highs = [f"{_number(le)}]"] if le is not None else []
        highs += [f"{_number(self.lt)})"] if self.lt is not None else []
        if len(lows) == 1 and len(highs) == 1:
            return f"lie in {lows[0]}, {highs[0]}"
        bounds = ((">=", self.ge), (">", self.gt), ("<=", le), ("<", self.lt))
        parts = [f"{op} {_number(bound)}" for op, bound in bounds if bound is not None]
        return "be " + " and ".join(parts)


def ranged(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, limit: float | None = None) -> Any:
    """A dataclass field with ``default`` whose value must lie in the given interval (``None`` passes).

    ``limit`` is the largest value a run can take (see :class:`Range`).
    """
    return field(default=default, metadata={"range": Range(ge=ge, gt=gt, le=le, lt=lt, limit=limit)})


# Upper bounds shared by the numeric fields below. Every number a config takes has one, so that a
# huge value is refused by its key here instead of overflowing inside torch or NumPy later.

#: Seeds. A run derives further seeds from a config's seed (``seed * 1000 + round``,
#: ``seed * 7919 + k``), which must stay inside ``torch.Generator.manual_seed``'s range [0, 2**64).
MAX_SEED = 2**32 - 1
#: ``dp.noise_seed``: the 63-bit seeds :func:`fedcond.privacy.dp.derive_noise_seed` gives each client.
MAX_NOISE_SEED = 2**63 - 1
#: Optimisation steps, epochs, rounds and the periods counted in them.
MAX_STEPS = 10**9
#: Images per class of a condensed set or a replay memory (more than a whole class of any
#: registered dataset); a memory's total budget too, since one class may hold all of it.
MAX_IPC = 10_000
#: Any other count of images: batch sizes, per-class subsamples, partition sizes.
MAX_IMAGES = 10**9
#: Networks a run trains or keeps side by side (evaluation runs, shadow models, embedder queues).
MAX_NETWORKS = 1000
#: Clients of a federation.
MAX_CLIENTS = 100_000
#: Wall-clock limits, in seconds (about 116 days).
MAX_SECONDS = 1e7
#: SGD learning rate on a network's weights.
MAX_LR = 10.0
#: SGD learning rate on synthetic pixels (trajectory-matching methods use up to 1e4).
MAX_PIXEL_LR = 1e6
#: Weights, factors and norm bounds without a natural scale.
MAX_FACTOR = 1e6
#: Privacy budget: a larger epsilon certifies nothing, and the accountants' noise calibration
#: stops converging (RDP runs for minutes at epsilon 1e308).
MAX_EPSILON = 100.0


def offset_seed(seed: int, offset: int) -> int:
    """The seed ``offset`` steps after ``seed``, wrapped into ``[0, MAX_SEED]``.

    A derived config (one client's round, one experience's condensation) takes it, so that a
    valid seed near :data:`MAX_SEED` never derives an invalid one.
    """
    return (seed + offset) % (MAX_SEED + 1)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _literal_args(annotation: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if typing.get_origin(arg) is Literal:
                return typing.get_args(arg)
    return None


def choices_of(cls: type, name: str) -> tuple[str, ...]:
    """The values a ``Literal`` config field accepts, in declaration order.

    Raises
    ------
    KeyError
        When ``name`` is not a field of ``cls`` with a ``Literal`` type.
    """
    choices = _literal_args(_hints(cls).get(name))
    if choices is None:
        raise KeyError(f"{cls.__name__}.{name} is not a field with a closed set of choices")
    return tuple(choices)


class _SelfChecking:
    """Base of the config dataclasses: choices and ranges are checked once, when an object is built.

    ``_section`` is the dotted prefix of the class's keys in a job (``distill``, ``dp`` ...), so
    that a message names the key as the user writes it.
    """

    _section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None or isinstance(value, _SelfChecking):
                continue
            key = f"{self._section}.{f.name}" if self._section else f.name
            choices = _literal_args(hints[f.name])
            if choices is not None and value not in choices:
                raise ConfigError(f"config key {key!r} must be one of {', '.join(map(str, choices))}; got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"config key {key!r} must be a finite number, got {value!r}")
            bounds = f.metadata.get("range")
            if bounds is not None and not bounds.contains(value):
                raise ConfigError(f"config key {key!r} must {bounds.describe(value)}, got {value!r}")
        self._check_rules()

    def _check_rules(self) -> None:
        """Rules across several fields; every field is in range when this runs."""

    def ignored_keys(self, keys: Iterable[str]) -> dict[str, str]:
        """The ``keys`` (dotted, underscore spelling) whose values this run does not read, each
        with the reason; a table key (``distill``) stands for every key inside it.

        A config holds every field, but the mode it describes may leave some unread (``alpha``
        in an ``iid`` partition). A command refuses such a key when the user gave it, instead of
        recording a setting that had no effect.
        """
        unread = self._unread_keys()
        return {key: reason for key in keys for table, reason in unread.items() if _is_under(key, table)}

    def _unread_keys(self) -> dict[str, str]:
        """Keys (or tables) this config's mode does not read -> why; subclasses with modes add theirs."""
        return {}


def _is_under(key: str, table: str) -> bool:
    """Whether the dotted ``key`` is ``table`` or lies inside it (``distill.ipc`` in ``distill``)."""
    return key == table or key.startswith(f"{table}.")


@dataclass(frozen=True)
class DataConfig(_SelfChecking):
    """Which dataset to load and from where.

    Attributes
    ----------
    dataset : str
        Registry name: ``digits`` (bundled, default), ``mnist``, ``fashion-mnist``, ``cifar10``,
        ``cifar100``, ``svhn`` or ``imagefolder``.
    data_dir : Path | None
        Root folder in torchvision's layout (or the image-folder root). Not needed for ``digits``.
    download : bool
        Let torchvision download a missing dataset. Off by default: nothing is fetched implicitly.
    """

    dataset: str = "digits"
    data_dir: Path | None = None
    download: bool = False


@dataclass(frozen=True)
class AugmentConfig(_SelfChecking):
    """Differentiable siamese augmentation (DSA) settings, the DSA paper's defaults.

    ``strategy`` is an underscore-separated list of transforms; one of them is drawn per call
    (the reference implementation's single mode). ``flip`` is dropped automatically for digit
    datasets, where a mirrored digit is another symbol.

    ``layout`` says who shares parameters inside DM: ``class`` (default) draws one set per
    class, applied to all of that class's real and synthetic images (the reference code's
    Siamese mode, ``theta[:] = theta[0]``), so the class means are compared under one common
    transform; ``sample`` gives every image its own parameter set, the j-th real and j-th
    synthetic image of a class sharing slot j (measured 0.4 points worse on MNIST at 10
    images per class, docs/distillation.md). DP-DM always uses
    ``class`` (see ``fedcond.privacy.dp``).
    """

    _section: ClassVar[str] = "distill.augment"

    strategy: str = "color_crop_cutout_flip_scale_rotate"
    layout: Literal["sample", "class"] = "class"
    scale: float = ranged(1.2, ge=1.0, limit=10.0)
    rotate_degrees: float = ranged(15.0, ge=0.0, le=180.0)
    crop_pad: float = ranged(0.125, ge=0.0, lt=1.0)
    cutout: float = ranged(0.5, ge=0.0, le=1.0)
    brightness: float = ranged(1.0, ge=0.0, limit=100.0)
    saturation: float = ranged(2.0, ge=0.0, limit=100.0)
    contrast: float = ranged(0.5, ge=0.0, limit=100.0)


@dataclass(frozen=True)
class DistillConfig(_SelfChecking):
    """Distribution-matching condensation settings (DM paper defaults).

    Attributes
    ----------
    ipc : int
        Synthetic images per class.
    iterations : int
        Outer optimisation steps on the synthetic images.
    init : str
        ``real`` (random real images of the class), ``herding`` (the class's herding coreset
        under a random ``model``), ``kmeans`` (centroids of ``ipc`` k-means clusters of the
        class in pixel space; with ``iterations=0`` the centroids are the synthetic set) or
        ``noise`` (standard normal).
    lr_img, momentum : float
        SGD on the synthetic pixels.
    batch_real : int
        Real images sampled per class and iteration.
    model : str
        Embedding network family (freshly initialised every iteration).
    dsa : bool
        Apply differentiable siamese augmentation to real and synthetic batches.
    matching : str
        ``mean`` matches class-mean embeddings (the DM paper). ``mmd`` adds a Gaussian-kernel
        maximum mean discrepancy between each class's real and synthetic embeddings (as in
        M3D, Zhang et al. 2024), matching the whole distribution rather than its mean. On
        digits it adds +0.5 points at ipc 10 and loses 1.7 at ipc 1. Not available with
        differential privacy, which releases only noisy class means.
    mmd_weight : float
        Weight of the MMD term, relative to the mean term (``matching="mmd"`` only).
    mixed_precision : bool
        bf16 autocast for the embedding forward passes where the device supports it.
    channels_last : bool
        Use the channels-last memory format on CPU (measured slower with bf16 here; off).
    compile : bool
        ``torch.compile`` the real-side embedding forward (about 30-60 s to compile on CPU,
        then about 1.6x faster per iteration; worth it from a few hundred iterations).
    real_chunk : int
        Real images per embedding forward on CPU (0: the whole batch at once; ignored on CUDA).
        Chunks of 64 keep each activation under glibc's mmap threshold, so freed memory is
        reused instead of page-faulted in again every iteration: measured 1.36 -> 0.88 s for
        the compiled MNIST real forward (10 x 256 images, bf16, 2 cores).
    checkpoint_every : int
        Write a resumable checkpoint every N iterations (0 disables).
    factor : int
        Multi-formation (IDC, Kim et al. 2022): each stored synthetic image holds
        ``factor x factor`` tiles, each upsampled into one training image, so ``ipc`` stored
        images per class train as ``ipc x factor^2`` at the same storage in pixels. 1 (the
        default) is plain DM; the factor must divide the image size.
    seed : int
        Seeds every generator used by the run.
    time_budget : float | None
        Wall-clock seconds the optimisation loop may take (``None``: no limit). The loop stops
        after the iteration during which the budget is spent and returns its set; the set's
        ``meta["iterations"]`` is the number actually run (under DP, the number accounted).
    queue_size : int
        IDM's queue of partly trained embedders (Zhao et al., CVPR 2023): ``0`` (the default,
        the DM paper) draws a fresh random network every iteration; ``K > 0`` keeps ``K``
        networks, matches with one drawn at random each iteration and trains it one SGD step on
        a real batch, so embeddings come from networks at many stages of training. Not with
        DP (the training step reads raw real data), a supplied embedder, ``compile`` or
        checkpoints. IDM's partition-and-expand is ``factor``.
    queue_lifetime : int
        Training steps after which a queued network is replaced by a fresh one.
    """

    _section: ClassVar[str] = "distill"

    ipc: int = ranged(10, ge=1, limit=MAX_IPC)
    iterations: int = ranged(1000, ge=0, limit=MAX_STEPS)
    init: Literal["real", "herding", "kmeans", "noise"] = "real"
    lr_img: float = ranged(1.0, gt=0.0, limit=MAX_PIXEL_LR)
    momentum: float = ranged(0.5, ge=0.0, lt=1.0)
    batch_real: int = ranged(256, ge=1, limit=MAX_IMAGES)
    model: str = "convnet"
    dsa: bool = True
    matching: Literal["mean", "mmd"] = "mean"
    mmd_weight: float = ranged(1.0, ge=0.0, limit=MAX_FACTOR)
    mixed_precision: bool = True
    channels_last: bool = False
    compile: bool = False
    real_chunk: int = ranged(64, ge=0, limit=MAX_IMAGES)
    checkpoint_every: int = ranged(0, ge=0, limit=MAX_STEPS)
    factor: int = ranged(1, ge=1, limit=64)
    seed: int = ranged(0, ge=0, limit=MAX_SEED)
    time_budget: float | None = ranged(None, gt=0.0, limit=MAX_SECONDS)
    queue_size: int = ranged(0, ge=0, limit=MAX_NETWORKS)
    queue_lifetime: int = ranged(100, ge=1, limit=MAX_STEPS)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class EvalConfig(_SelfChecking):
    """The field's evaluation protocol: K fresh networks trained on the synthetic set.

    SGD (lr 0.01, momentum 0.9, weight decay 5e-4), learning rate x0.1 at half of the
    epochs, DSA during training, batch 256; tested on the real test set.
    """

    _section: ClassVar[str] = "eval"

    runs: int = ranged(3, ge=0, limit=MAX_NETWORKS)
    epochs: int = ranged(300, ge=1, limit=MAX_STEPS)
    lr: float = ranged(0.01, gt=0.0, limit=MAX_LR)
    momentum: float = ranged(0.9, ge=0.0, lt=1.0)
    weight_decay: float = ranged(5e-4, ge=0.0, limit=1.0)
    batch_size: int = ranged(256, ge=1, limit=MAX_IMAGES)
    dsa: bool = True
    model: str = "convnet"


@dataclass(frozen=True)
class DPConfig(_SelfChecking):
    """Differentially private distribution matching.

    Attributes
    ----------
    epsilon, delta : float
        Target privacy budget for the whole condensation run.
    clip_norm : float
        Per-sample L2 bound on each real embedding after scaling it by ``1/sqrt(D)``
        (typical scaled norms are 0.5-0.55 on digits and MNIST, so 0.6 rarely clips).
    sample_rate : float
        Poisson sampling rate of the real batch (per class); 0 derives it from ``batch_real``.
    accountant : str
        ``rdp`` (default) or ``prv``.
    noise_seed : int | None
        Seed of the mechanism's private randomness (Poisson masks and Gaussian noise). ``None``
        (the default) draws a fresh secret seed from the operating system for every run, as DP
        requires: the run's ``seed`` is published in the set's metadata, and noise that can be
        regenerated protects nothing. Set it only for reproducible research runs; the guarantee
        then holds only while this value stays secret.
    """

    _section: ClassVar[str] = "dp"

    epsilon: float = field(metadata={"range": Range(gt=0.0, limit=MAX_EPSILON)})
    delta: float = ranged(1e-5, gt=0.0, lt=1.0)
    clip_norm: float = ranged(0.6, gt=0.0, limit=MAX_FACTOR)
    sample_rate: float = ranged(0.0, ge=0.0, le=1.0)
    accountant: Literal["rdp", "prv"] = "rdp"
    noise_seed: int | None = ranged(None, ge=0, limit=MAX_NOISE_SEED)


@dataclass(frozen=True)
class RobustConfig(_SelfChecking):
    """The FedCond server's defences against hostile or faulty clients (``docs/robustness.md``).

    Attributes
    ----------
    enabled : bool
        The robust rule across clients (on by default): claimed counts capped by robust
        statistics, and the embedding outlier rule when ``outlier_nets`` > 0. Off, only the
        per-reply checks below apply.
    pixel_margin : float | None
        Allowed overshoot of synthetic pixels beyond the dataset's normalised ``[0, 1]`` pixel
        range, in units of that range's width (a reply beyond it is refused; always applied).
        ``None``: the measured default of the job's ``distill.matching``
        (:data:`fedcond.federated.validation.PIXEL_MARGINS`).
    max_class_count : int
        Largest real-sample count a reply may claim for one class (always applied).
    count_cap_factor : float
        A client's claimed real-sample total counts at most this many times the (upper) median
        client's total; larger claims are scaled down (class proportions kept).
    outlier_nets : int
        Random embedding networks behind the outlier rule; 0 (the default) leaves the count cap
        alone. Judged by the other clients (``reference_per_class`` 0), the rule rejects label
        flippers that act alone, but under non-IID partitions a coalition of 2-3 colluders of 10
        outnumbers a class's honest holders and gets honest clients rejected: measured on
        digits, Dirichlet(0.1), a coordinated flip costs more with the rule than without it, so
        it is opt-in; a server reference is not outvoted (docs/robustness.md).
    outlier_margin : float
        A client's class is an outlier when its mean embedding lies closer, by this factor, to
        another class's reference (the other clients' median embedding) than to its own class's.
    outlier_spread : float
        ... or farther from its class's median embedding than this many times the typical
        (median) client's distance.
    reference_per_class : int
        Real images per class the server draws from its own training split and judges every
        client class against (the outlier rule's reference; 0, the default: the other clients'
        median). A server holding a small labelled set of its own gets a reference no coalition
        of clients moves (docs/robustness.md).
    max_set_age : int
        Rounds a client's last accepted set stays in the union without a fresh one.
    """

    _section: ClassVar[str] = "robust"

    #: on by default: the count cap changes no honest run and neutralises inflated claims
    #: (docs/robustness.md)
    enabled: bool = True
    pixel_margin: float | None = ranged(None, ge=0.0, limit=MAX_FACTOR)
    max_class_count: int = ranged(10_000_000, ge=1, le=2**31 - 1)
    count_cap_factor: float = ranged(3.0, ge=1.0, limit=MAX_FACTOR)
    outlier_nets: int = ranged(0, ge=0, limit=MAX_NETWORKS)
    outlier_margin: float = ranged(1.0, gt=0.0, limit=MAX_FACTOR)
    outlier_spread: float = ranged(4.0, gt=0.0, limit=MAX_FACTOR)
    reference_per_class: int = ranged(0, ge=0, limit=MAX_IPC)
    max_set_age: int = ranged(5, ge=1, limit=MAX_STEPS)

    def _check_rules(self) -> None:
        if self.reference_per_class > 0 and (not self.enabled or self.outlier_nets < 1):
            raise ConfigError(
                "config key 'robust.reference_per_class' sets the outlier rule's reference; the rule is off "
                "(it needs robust.enabled=true and robust.outlier_nets >= 1)"
            )


#: the weight-averaging strategies (Flower's): their clients train the global model locally
WEIGHT_AVERAGING = ("fedavg", "fedprox", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
#: keys (or tables) that only some strategies read -> those strategies; every other key is read by all
STRATEGY_KEYS: dict[str, tuple[str, ...]] = {
    "distill": ("fedcond",),
    "robust": ("fedcond",),
    "server_epochs": ("fedcond",),
    "server_lr": ("fedcond",),
    "server_embedder": ("fedcond",),
    "local_epochs": WEIGHT_AVERAGING,
    "local_lr": WEIGHT_AVERAGING,
    "local_batch_size": WEIGHT_AVERAGING,
    "proximal_mu": ("fedprox",),
    "trimmed_beta": ("fedtrimmedavg",),
    "byzantine_nodes": ("krum", "multikrum", "bulyan"),
}


@dataclass(frozen=True)
class FederatedConfig(_SelfChecking):
    """A federated run: partitioning, strategy and the clients' condensation settings.

    ``server_embedder`` sends the global model to the clients from round 2 as DM's embedding
    network (a client refuses it without DP unless its policy sets ``accept_server_embedder``).
    ``robust`` holds the FedCond server's defences; ``node_wait_timeout`` bounds the wait for
    ``min_available_nodes`` (seconds); ``trimmed_beta`` (FedTrimmedAvg's cut fraction) and
    ``byzantine_nodes`` (Krum, MultiKrum, Bulyan's assumed attackers) set Flower's robust
    weight-averaging baselines.
    """

    strategy: str = "fedcond"
    num_clients: int = ranged(10, ge=1, limit=MAX_CLIENTS)
    partition: Literal["iid", "dirichlet", "shards"] = "dirichlet"
    alpha: float = ranged(0.1, ge=0.0, limit=MAX_FACTOR)
    shards_per_client: int = ranged(2, ge=0, limit=MAX_IMAGES)
    min_partition_size: int = ranged(10, ge=1, limit=MAX_IMAGES)
    rounds: int = ranged(1, ge=1, limit=MAX_STEPS)
    local_epochs: int = ranged(1, ge=1, limit=MAX_STEPS)
    local_lr: float = ranged(0.01, gt=0.0, limit=MAX_LR)
    local_batch_size: int = ranged(32, ge=1, limit=MAX_IMAGES)
    proximal_mu: float = ranged(0.01, ge=0.0, limit=MAX_FACTOR)
    fraction_train: float = ranged(1.0, gt=0.0, le=1.0)
    min_reply_fraction: float = ranged(0.5, ge=0.0, le=1.0)
    min_available_nodes: int = ranged(1, ge=1, limit=MAX_CLIENTS)
    round_timeout: float = ranged(3600.0, gt=0.0, limit=MAX_SECONDS)
    train_per_class: int | None = ranged(None, ge=1, limit=MAX_IMAGES)
    test_per_class: int | None = ranged(None, ge=1, limit=MAX_IMAGES)
    server_epochs: int = ranged(300, ge=1, limit=MAX_STEPS)
    server_lr: float = ranged(0.01, gt=0.0, limit=MAX_LR)
    #: multi-round: send the global model to the clients as DM's embedding network (FedDM's
    #: choice); the clients' policy must set ``accept_server_embedder``, or the run must be DP
    server_embedder: bool = False
    model: str = "convnet"
    seed: int = ranged(0, ge=0, limit=MAX_SEED)
    #: clients start from noise: a real-image start uploads near-copies of training images, and
    #: the default client policy (fedcond.federated.policy) refuses it
    distill: DistillConfig = field(default_factory=lambda: DistillConfig(iterations=200, init="noise"))
    dp: DPConfig | None = None
    robust: RobustConfig = field(default_factory=RobustConfig)
    node_wait_timeout: float = ranged(600.0, gt=0.0, limit=MAX_SECONDS)
    trimmed_beta: float = ranged(0.2, ge=0.0, lt=0.5)
    byzantine_nodes: int = ranged(1, ge=0, limit=MAX_CLIENTS)

    def _check_rules(self) -> None:
        if self.partition == "dirichlet" and not self.alpha > 0:
            raise ConfigError(f"config key 'alpha' must be > 0 for a Dirichlet partition, got {self.alpha}")
        if self.partition == "shards" and self.shards_per_client < 1:
            raise ConfigError(f"config key 'shards_per_client' must be >= 1, got {self.shards_per_client}")
        if self.strategy != "fedcond" and self.dp is not None:
            raise ConfigError(
                f"config keys 'dp.*' apply to FedCond's DP-DM only; strategy {self.strategy!r} would run without "
                "any privacy while the run config claimed it (drop dp.* for this strategy)"
            )

    def ignored_keys(self, keys: Iterable[str], *, strategies: Iterable[str] = ()) -> dict[str, str]:
        """The ``keys`` no run of these settings reads, each with the reason.

        ``strategies`` are further runs of the same settings under other strategies (``fedcond
        simulate --compare``): a key that any of them, or this config's strategy, reads (see
        :data:`STRATEGY_KEYS`) is not ignored.
        """
        keys, runs = list(keys), {self.strategy, *strategies}
        ignored = super().ignored_keys(keys)
        for key in keys:
            for table, readers in STRATEGY_KEYS.items():
                if _is_under(key, table) and not runs & set(readers) and key not in ignored:
                    ignored[key] = (
                        f"it is read by {', '.join(readers)} only, and this command runs {', '.join(sorted(runs))}"
                    )
        return ignored

    def _unread_keys(self) -> dict[str, str]:
        unread = {}
        if self.partition != "dirichlet":
            unread["alpha"] = f"it is the Dirichlet concentration, and partition {self.partition} draws none"
        if self.partition != "shards":
            unread["shards_per_client"] = f"it sizes the shards partition, not partition {self.partition}"
        if not self.robust.enabled:
            for key in ("count_cap_factor", "outlier_nets", "outlier_margin", "outlier_spread"):
                unread[f"robust.{key}"] = "the robust rule across clients is off (robust.enabled=false)"
        elif self.robust.outlier_nets == 0:
            for key in ("outlier_margin", "outlier_spread"):
                unread[f"robust.{key}"] = "it tunes the embedding outlier rule, which is off (robust.outlier_nets=0)"
        return unread


@dataclass(frozen=True)
class ContinualConfig(_SelfChecking):
    """A class-incremental continual-learning run (see ``docs/continual.md``).

    Attributes
    ----------
    benchmark : str
        ``split-digits``, ``split-mnist``, ``split-fashion-mnist`` or ``split-cifar10``
        (5 experiences x 2 classes).
    replay : str
        ``none``, ``random``, ``herding``, ``distilled`` or ``joint`` (the offline upper bound).
    memory_per_class : int
        Replay images per class (every replay kind holds exactly the same number of images).
    max_memory : int | None
        When set, a fixed total budget divided over the classes seen so far (older classes
        shrink as new ones arrive) instead of ``memory_per_class`` images per class.
    epochs, batch_size, lr, momentum, weight_decay
        Naive (fine-tuning) training per experience; replay batches add ``batch_size``
        memory images to each minibatch.
    augment_memory : bool
        Replay every memory image through a freshly drawn DSA transform each time it is read
        (any replay kind, so the comparison stays equal; the experience's images are not
        augmented). See :class:`fedcond.continual.augment.MemoryAugmentation`.
    gdumb : bool
        GDumb-style protocol: after each experience a fresh network is trained on the memory
        alone, for ``gdumb_epochs`` epochs with DSA augmentation.
    train_per_class, test_per_class : int | None
        Optional seeded per-class subsampling of the train/test splits (CPU budgets).
    num_experiences : int
        Experiences in the class-incremental stream.
    """

    benchmark: Literal["split-digits", "split-mnist", "split-fashion-mnist", "split-cifar10"] = "split-digits"
    replay: Literal["none", "random", "herding", "distilled", "joint"] = "distilled"
    memory_per_class: int = ranged(10, ge=0, limit=MAX_IPC)
    max_memory: int | None = ranged(None, ge=1, limit=MAX_IPC)
    epochs: int = ranged(5, ge=1, limit=MAX_STEPS)
    batch_size: int = ranged(64, ge=1, limit=MAX_IMAGES)
    lr: float = ranged(0.01, gt=0.0, limit=MAX_LR)
    momentum: float = ranged(0.9, ge=0.0, lt=1.0)
    weight_decay: float = ranged(0.0, ge=0.0, limit=1.0)
    model: str = "convnet"
    augment_memory: bool = False
    gdumb: bool = False
    gdumb_epochs: int = ranged(100, ge=1, limit=MAX_STEPS)
    train_per_class: int | None = ranged(None, ge=1, limit=MAX_IMAGES)
    test_per_class: int | None = ranged(None, ge=1, limit=MAX_IMAGES)
    num_experiences: int = ranged(5, ge=1, limit=1000)
    seed: int = ranged(0, ge=0, limit=MAX_SEED)
    distill: DistillConfig = field(default_factory=lambda: DistillConfig(iterations=200))

    def _check_rules(self) -> None:
        remembers = self.replay in ("random", "herding", "distilled")
        if remembers and self.max_memory is None and self.memory_per_class < 1:
            raise ConfigError(
                f"config key 'memory_per_class' must be >= 1 for replay {self.replay}, got {self.memory_per_class}"
            )
        if self.gdumb and not remembers:
            raise ConfigError(
                f"GDumb trains on the memory alone: it needs replay random, herding or distilled, not {self.replay!r}"
            )
        if self.augment_memory and (self.gdumb or not remembers):
            raise ConfigError(
                "augment_memory augments replayed memory images: it needs replay random, herding or distilled "
                "without GDumb (GDumb already trains with DSA)"
            )

    def _unread_keys(self) -> dict[str, str]:
        unread: dict[str, str] = {}
        if self.replay != "distilled":
            condenses = f"it configures distilled replay's condensation, and replay {self.replay} condenses nothing"
            # augment_memory replays the memory through the transforms DM matches under
            kept = ("augment",) if self.augment_memory else ()
            names = [f.name for f in dataclasses.fields(DistillConfig) if f.name not in kept]
            unread.update({f"distill.{name}": condenses for name in names})
        unread["distill.ipc"] = "the memory budget sets the images per class (memory_per_class or max_memory)"
        if self.replay in ("none", "joint"):
            keeps = [key for key in ("memory_per_class", "max_memory") if getattr(self, key)]  # 0 says "none"
            unread.update({key: f"replay {self.replay} keeps no memory" for key in keeps})
        elif self.max_memory is not None:
            unread["memory_per_class"] = "max_memory sets the memory's budget instead"
        if self.gdumb:
            for key in ("epochs", "batch_size", "lr", "momentum", "weight_decay"):
                unread[key] = "GDumb trains no network on the stream; it trains each one on the memory (gdumb_epochs)"
        else:
            unread["gdumb_epochs"] = "it sets GDumb's training, and the run does not use GDumb (gdumb)"
        return unread


@dataclass(frozen=True)
class AuditConfig(_SelfChecking):
    """Recoverability and membership-inference audit settings.

    ``reference_size`` real training images train the real-data reference model;
    ``max_candidates`` caps the members and non-members each attack scores; ``significance``
    is the one-sided test level behind the verdict; ``model`` is the attacked architecture.
    """

    shadow_models: int = ranged(4, ge=0, limit=MAX_NETWORKS)
    target_epochs: int = ranged(100, ge=1, limit=MAX_STEPS)
    feature_space: bool = True
    calibration_quantile: float = ranged(0.01, gt=0.0, lt=1.0)
    seed: int = ranged(0, ge=0, limit=MAX_SEED)
    reference_size: int = ranged(1000, ge=1, limit=MAX_IMAGES)
    max_candidates: int = ranged(1000, ge=1, limit=MAX_IMAGES)
    significance: float = ranged(0.01, gt=0.0, lt=1.0)
    model: str = "convnet"


T = TypeVar("T")


def _normalise_key(key: str) -> str:
    return key.strip().replace("-", "_")


def _merge_into(target: dict[str, Any], source: Mapping[str, Any], *, prefix: str) -> None:
    """Add ``source``'s keys to ``target``; a key both give (at any depth) is an error."""
    for key, value in source.items():
        if key not in target:
            target[key] = value
        elif isinstance(target[key], dict) and isinstance(value, Mapping):
            _merge_into(target[key], value, prefix=f"{prefix}{key}.")
        else:
            raise ConfigError(f"config key {prefix}{key!r} is given twice")


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Turn ``{"distill.ipc": 1}`` (or already nested dicts) into nested dicts."""
    nested: dict[str, Any] = {}
    for raw_key, value in flat.items():
        parts = [_normalise_key(p) for p in str(raw_key).split(".")]
        if not any(parts):
            raise ConfigError(f"config key {raw_key!r} is empty: a key names a setting, e.g. distill.ipc")
        if not all(parts):
            raise ConfigError(f"config key {raw_key!r} has an empty name before, between or after its dots")
        node = nested
        for depth, part in enumerate(parts[:-1], start=1):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                table = ".".join(parts[:depth])
                raise ConfigError(f"config key {table!r} is a table of settings, not a value; set its keys")
        if isinstance(value, Mapping):
            inner = node.setdefault(parts[-1], {})
            if not isinstance(inner, dict):
                raise ConfigError(f"config key {raw_key!r} is a table of settings, not a value; set its keys")
            _merge_into(inner, _nest(value), prefix=f"{raw_key}.")  # "distill.ipc" and [distill] ipc
        else:
            if isinstance(node.get(parts[-1]), dict):  # "distill.augment=3" beside "distill.augment.scale=2"
                raise ConfigError(f"config key {raw_key!r} is a table of settings, not a value; set its keys")
            if parts[-1] in node:  # "num-clients" and "num_clients" both given
                raise ConfigError(f"config key {raw_key!r} is given twice (hyphen and underscore spellings)")
            node[parts[-1]] = value
    return nested


class _FileString(str):
    """A string a TOML file typed as a string: unlike a ``--set`` value it is not read as a number."""

    __slots__ = ()


class _FileInt(int):
    """An integer a TOML file typed as one: unlike Flower's run config it is not read as a boolean
    (``enabled = 0`` in a file, a client policy above all, is a typo for ``false``, not a switch)."""

    __slots__ = ()


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if isinstance(value, str) and value in choices:
            return str(value)
        raise ConfigError(f"config key {key!r} must be one of {', '.join(map(str, choices))}; got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if isinstance(value, _FileString) and not value.strip():
            # a templated file whose variable was empty: leaving the key out is how a file says
            # "none", and a dropped ledger or data folder must not pass for a choice
            raise ConfigError(f"config key {key!r} is an empty string in the file; leave the key out for none")
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        return _coerce(value, args[0], key)
    if origin is tuple:
        return _coerce_tuple(value, annotation, key)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            keys = ", ".join(f"{key}.{f.name}" for f in dataclasses.fields(annotation)[:3])
            raise ConfigError(
                f"config key {key!r} is a table of {annotation.__name__} settings, not a value (got {value!r}); "
                f"set its keys instead ({keys} ...)"
            )
        return parse_config(annotation, value, _prefix=f"{key}.")
    if isinstance(value, _FileString) and annotation in (bool, int, float):
        raise ConfigError(
            f"config key {key!r}: the config file gives the string {str(value)!r}, expected "
            f"{annotation.__name__} (write it without quotes)"
        )
    if isinstance(value, _FileInt) and annotation is bool:
        raise ConfigError(
            f"config key {key!r}: the config file gives the number {int(value)}, expected true or false"
        )
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError(value)
        if annotation is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if not math.isfinite(number):  # NaN/inf settings ran to the end and reported null
                raise ValueError(value)
            return number
        if annotation is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TypeError(value)  # a table or list is not a name
            return str(value)
        if annotation is Path:
            return Path(value).expanduser()
    except (TypeError, ValueError) as exc:
        name = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(f"config key {key!r}: cannot read {value!r} as {name}") from exc
    return value


def _coerce_tuple(value: Any, annotation: Any, key: str) -> tuple[Any, ...]:
    """A homogeneous ``tuple[X, ...]``: a TOML array, or a comma-separated ``--set`` string."""
    args = typing.get_args(annotation)
    if len(args) != 2 or args[1] is not Ellipsis:
        raise ConfigError(f"config key {key!r}: unsupported annotation {annotation}")
    if isinstance(value, str) and not isinstance(value, _FileString):
        items: list[Any] = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(f"config key {key!r} expects a list, got {value!r}")
    return tuple(_coerce(item, args[0], f"{key}[{i}]") for i, item in enumerate(items))


def parse_config(cls: type[T], values: Mapping[str, Any] | None = None, *, _prefix: str = "") -> T:
    """Build the frozen dataclass ``cls`` from a nested or dotted mapping.

    Parameters
    ----------
    cls : type
        One of the config dataclasses of this module.
    values : Mapping[str, Any] | None
        Keys may use ``-`` or ``_`` and dots for nesting (``distill.ipc``), as in TOML files,
        CLI ``--set key=value`` overrides and Flower ``run_config``.

    Returns
    -------
    The dataclass instance. Unspecified fields keep their defaults.

    Raises
    ------
    ConfigError
        For an unknown key (the message lists the valid ones) or a value of the wrong type.
    """
    nested = _nest(values or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(nested) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(_prefix + u for u in unknown)}; "
            f"valid keys: {', '.join(_prefix + k for k in fields)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in nested.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation) and isinstance(value, Mapping):
            default = _default_of(fields[name])
            if default is not None:
                given = _flatten_mapping(value)
                # a value given for a whole table replaces its defaults, so that _coerce names it
                base = {k: v for k, v in flatten_config(default).items() if not _under_any(k, given)}
                value = {**base, **given}
        elif _optional_dataclass(annotation) is not None and isinstance(value, Mapping):
            annotation = _optional_dataclass(annotation)
        kwargs[name] = _coerce(value, annotation, _prefix + name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"incomplete {cls.__name__} settings: {exc}") from exc


def _under_any(key: str, tables: Mapping[str, Any]) -> bool:
    """Whether the dotted ``key`` lies inside one of the keys of ``tables`` (``augment.scale`` in ``augment``)."""
    return any(key.startswith(f"{table}.") for table in tables)


def _optional_dataclass(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _flatten_mapping(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = prefix + _normalise_key(str(key))
        if isinstance(value, Mapping):
            if not value:
                # an empty table would vanish: an empty [dp] would silently run without privacy
                raise ConfigError(f"config table [{name}] is empty (are all its keys commented out?)")
            out.update(_flatten_mapping(value, name + "."))
        else:
            if name in out:
                raise ConfigError(f"config key {name!r} is given twice (hyphen and underscore spellings)")
            out[name] = value
    return out


def flatten_config(config: Any) -> dict[str, Any]:
    """Flatten a config dataclass into ``{"distill.ipc": 10, ...}`` (JSON-friendly values)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update({f"{f.name}.{k}": v for k, v in flatten_config(value).items()})
        elif isinstance(value, Path):
            out[f.name] = str(value)
        else:
            out[f.name] = value
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML experiment file into a flat dotted mapping for :func:`parse_config`.

    Raises
    ------
    ConfigError
        When the path is missing, a folder or unreadable, or the file is not UTF-8 or not valid
        TOML; the message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder, not a TOML file")
    try:
        text = path.read_bytes().decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "TOML files are UTF-8: save it in that encoding"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc})") from exc
    # strings stay strings: "3" in a file is a typo for 3, not a number to guess
    return {k: _file_value(v) for k, v in _flatten_mapping(data).items()}


def _file_value(value: Any) -> Any:
    """``value`` as a file typed it: strings and integers marked, so neither is read as another type."""
    if isinstance(value, str):
        return _FileString(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return _FileInt(value)
    return value
