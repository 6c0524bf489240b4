"""Typed, frozen configuration objects and the one place where config keys are parsed.

CLI flags, TOML files and Flower's flat ``run_config`` all end up in :func:`parse_config`,
which turns a (possibly nested or dotted) mapping into the dataclasses below, coercing
values to the annotated types and rejecting unknown keys with a message that names them.
Everything below the CLI receives these typed objects, never an argparse namespace.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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
    "RobustConfig",
    "load_toml",
    "parse_config",
    "flatten_config",
]


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key."""


@dataclass(frozen=True)
class DataConfig:
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
class AugmentConfig:
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

    strategy: str = "color_crop_cutout_flip_scale_rotate"
    layout: str = "class"
    scale: float = 1.2
    rotate_degrees: float = 15.0
    crop_pad: float = 0.125
    cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


@dataclass(frozen=True)
class DistillConfig:
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

    ipc: int = 10
    iterations: int = 1000
    init: str = "real"
    lr_img: float = 1.0
    momentum: float = 0.5
    batch_real: int = 256
    model: str = "convnet"
    dsa: bool = True
    matching: str = "mean"
    mmd_weight: float = 1.0
    mixed_precision: bool = True
    channels_last: bool = False
    compile: bool = False
    real_chunk: int = 64
    checkpoint_every: int = 0
    factor: int = 1
    seed: int = 0
    time_budget: float | None = None
    queue_size: int = 0
    queue_lifetime: int = 100
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class EvalConfig:
    """The field's evaluation protocol: K fresh networks trained on the synthetic set.

    SGD (lr 0.01, momentum 0.9, weight decay 5e-4), learning rate x0.1 at half of the
    epochs, DSA during training, batch 256; tested on the real test set.
    """

    runs: int = 3
    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    dsa: bool = True
    model: str = "convnet"


@dataclass(frozen=True)
class DPConfig:
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

    epsilon: float
    delta: float = 1e-5
    clip_norm: float = 0.6
    sample_rate: float = 0.0
    accountant: str = "rdp"
    noise_seed: int | None = None


@dataclass(frozen=True)
class RobustConfig:
    """The FedCond server's defences against hostile or faulty clients (``docs/robustness.md``).

    Attributes
    ----------
    enabled : bool
        The robust rule across clients: claimed counts capped by robust statistics and the
        embedding outlier rule. Off, only the per-reply checks below apply.
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
        Random embedding networks behind the outlier rule.
    outlier_margin : float
        A client's class is an outlier when its mean embedding lies closer, by this factor, to
        another class's median embedding than to its own class's.
    outlier_spread : float
        ... or farther from its class's median embedding than this many times the typical
        (median) client's distance.
    max_set_age : int
        Rounds a client's last accepted set stays in the union without a fresh one.
    """

    #: off by default: on the demo's honest Dirichlet(0.1) partitions it cost 9 points on two of
    #: three seeds (docs/robustness.md), more than the issue's "costs nothing measurable" allows
    enabled: bool = False
    pixel_margin: float | None = None
    max_class_count: int = 10_000_000
    count_cap_factor: float = 3.0
    outlier_nets: int = 2
    outlier_margin: float = 1.0
    outlier_spread: float = 4.0
    max_set_age: int = 5

    def __post_init__(self) -> None:
        if self.pixel_margin is not None and not self.pixel_margin >= 0:
            raise ConfigError(f"config key 'robust.pixel_margin' must be >= 0, got {self.pixel_margin}")
        if not 1 <= self.max_class_count <= 2**31 - 1:
            raise ConfigError(f"config key 'robust.max_class_count' must lie in 1..2^31-1, got {self.max_class_count}")
        if not self.count_cap_factor >= 1:
            raise ConfigError(f"config key 'robust.count_cap_factor' must be >= 1, got {self.count_cap_factor}")
        if self.outlier_nets < 0 or not self.outlier_margin > 0 or not self.outlier_spread > 0:
            raise ConfigError("config keys 'robust.outlier_nets' (>= 0), 'robust.outlier_margin' and "
                              "'robust.outlier_spread' (> 0) are out of range")
        if self.max_set_age < 1:
            raise ConfigError(f"config key 'robust.max_set_age' must be >= 1, got {self.max_set_age}")


@dataclass(frozen=True)
class FederatedConfig:
    """A federated run: partitioning, strategy and the clients' condensation settings.

    ``robust`` holds the FedCond server's defences; ``node_wait_timeout`` bounds the wait for
    ``min_available_nodes`` (seconds); ``trimmed_beta`` (FedTrimmedAvg's cut fraction) and
    ``byzantine_nodes`` (Krum, MultiKrum, Bulyan's assumed attackers) set Flower's robust
    weight-averaging baselines.
    """

    strategy: str = "fedcond"
    num_clients: int = 10
    partition: str = "dirichlet"
    alpha: float = 0.1
    shards_per_client: int = 2
    min_partition_size: int = 10
    rounds: int = 1
    local_epochs: int = 1
    local_lr: float = 0.01
    local_batch_size: int = 32
    proximal_mu: float = 0.01
    fraction_train: float = 1.0
    min_reply_fraction: float = 0.5
    min_available_nodes: int = 1
    round_timeout: float = 3600.0
    train_per_class: int | None = None
    test_per_class: int | None = None
    server_epochs: int = 300
    server_lr: float = 0.01
    model: str = "convnet"
    seed: int = 0
    #: clients start from noise: a real-image start uploads near-copies of training images, and
    #: the default client policy (fedcond.federated.policy) refuses it
    distill: DistillConfig = field(default_factory=lambda: DistillConfig(iterations=200, init="noise"))
    dp: DPConfig | None = None
    robust: RobustConfig = field(default_factory=RobustConfig)
    node_wait_timeout: float = 600.0
    trimmed_beta: float = 0.2
    byzantine_nodes: int = 1


@dataclass(frozen=True)
class ContinualConfig:
    """A class-incremental continual-learning run (see ``docs/continual.md``).

    Attributes
    ----------
    benchmark : str
        ``split-digits``, ``split-mnist`` or ``split-fashion-mnist`` (5 experiences x 2 classes).
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

    benchmark: str = "split-digits"
    replay: str = "distilled"
    memory_per_class: int = 10
    max_memory: int | None = None
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    model: str = "convnet"
    augment_memory: bool = False
    gdumb: bool = False
    gdumb_epochs: int = 100
    train_per_class: int | None = None
    test_per_class: int | None = None
    num_experiences: int = 5
    seed: int = 0
    distill: DistillConfig = field(default_factory=lambda: DistillConfig(iterations=200))


@dataclass(frozen=True)
class AuditConfig:
    """Recoverability and membership-inference audit settings.

    ``reference_size`` real training images train the real-data reference model;
    ``max_candidates`` caps the members and non-members each attack scores; ``significance``
    is the one-sided test level behind the verdict; ``model`` is the attacked architecture.
    """

    shadow_models: int = 4
    target_epochs: int = 100
    feature_space: bool = True
    calibration_quantile: float = 0.01
    seed: int = 0
    reference_size: int = 1000
    max_candidates: int = 1000
    significance: float = 0.01
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
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {raw_key!r} conflicts with a scalar value")
        if isinstance(value, Mapping):
            inner = node.setdefault(parts[-1], {})
            if not isinstance(inner, dict):
                raise ConfigError(f"config key {raw_key!r} conflicts with a scalar value")
            _merge_into(inner, _nest(value), prefix=f"{raw_key}.")  # "distill.ipc" and [distill] ipc
        else:
            if parts[-1] in node:  # "num-clients" and "num_clients" both given
                raise ConfigError(f"config key {raw_key!r} is given twice (hyphen and underscore spellings)")
            node[parts[-1]] = value
    return nested


class _FileString(str):
    """A string a TOML file typed as a string: unlike a ``--set`` value it is not read as a number."""

    __slots__ = ()


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        return _coerce(value, args[0], key)
    if origin is tuple:
        return _coerce_tuple(value, annotation, key)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} expects a table of {annotation.__name__} settings")
        return parse_config(annotation, value, _prefix=f"{key}.")
    if isinstance(value, _FileString) and annotation in (bool, int, float):
        raise ConfigError(
            f"config key {key!r}: the config file gives the string {str(value)!r}, expected "
            f"{annotation.__name__} (write it without quotes)"
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
                base = flatten_config(default)
                base.update(_flatten_mapping(value))
                value = base
        elif _optional_dataclass(annotation) is not None and isinstance(value, Mapping):
            annotation = _optional_dataclass(annotation)
        kwargs[name] = _coerce(value, annotation, _prefix + name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"incomplete {cls.__name__} settings: {exc}") from exc


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
        When the file is missing or not valid TOML.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    # strings stay strings: "3" in a file is a typo for 3, not a number to guess
    return {k: _FileString(v) if isinstance(v, str) else v for k, v in _flatten_mapping(data).items()}
