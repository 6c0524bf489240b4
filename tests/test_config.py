"""Config parsing: nested/dotted keys, coercion, clear errors for unknown keys and bad values."""

from __future__ import annotations

import pytest

from fedcond.config import ConfigError, DistillConfig, FederatedConfig, flatten_config, load_toml, parse_config


def test_dotted_hyphenated_and_coerced() -> None:
    config = parse_config(FederatedConfig, {"num-clients": "4", "distill.ipc": "3", "distill.dsa": "false"})
    assert config.num_clients == 4 and config.distill.ipc == 3 and config.distill.dsa is False
    # untouched nested fields keep the section's own defaults
    assert config.distill.iterations == FederatedConfig().distill.iterations


def test_unknown_key_and_bad_value() -> None:
    with pytest.raises(ConfigError, match="unknown config key.*ipcs.*valid keys"):
        parse_config(DistillConfig, {"ipcs": 3})
    with pytest.raises(ConfigError, match="'ipc'.*as int"):
        parse_config(DistillConfig, {"ipc": "ten"})
    with pytest.raises(ConfigError, match="as int"):
        parse_config(DistillConfig, {"ipc": 2.5})


def test_optional_dp_section_and_flatten_roundtrip() -> None:
    config = parse_config(FederatedConfig, {"dp.epsilon": 2.0})
    assert config.dp is not None and config.dp.epsilon == 2.0 and config.dp.delta == 1e-5
    again = parse_config(FederatedConfig, {k: v for k, v in flatten_config(config).items() if v is not None})
    assert again == config


def test_toml(tmp_path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('num-clients = 3\n[distill]\nipc = 2\n')
    assert parse_config(FederatedConfig, load_toml(path)).distill.ipc == 2
    path.write_text("num-clients = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")


def test_an_empty_table_is_an_error_not_a_silently_missing_section(tmp_path) -> None:
    # "[dp]" with its keys commented out must not vanish: the run would go ahead without privacy
    path = tmp_path / "dp.toml"
    path.write_text('strategy = "fedcond"\n[dp]\n# epsilon = 8.0\n')
    with pytest.raises(ConfigError, match=r"table \[dp\] is empty"):
        load_toml(path)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dp.epsilon": float("inf")}, "'dp.epsilon': cannot read inf as float"),
        ({"dp.epsilon": "nan"}, "cannot read 'nan' as float"),
        ({"distill.lr_img": float("nan")}, "cannot read nan as float"),
        ({"model": {"name": "convnet"}}, "'model': cannot read"),
        ({"num-clients": 3, "num_clients": 5}, "given twice"),
    ],
)
def test_non_finite_numbers_tables_for_names_and_duplicate_spellings_are_refused(values, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(FederatedConfig, values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"distill.dsa": 2}, "'distill.dsa': cannot read 2 as bool"),
        ({"distill.dsa": "maybe"}, "'distill.dsa': cannot read 'maybe' as bool"),
        ({"num_clients": True}, "'num_clients': cannot read True as int"),
        ({"alpha": False}, "'alpha': cannot read False as float"),
        ({"model": True}, "'model': cannot read True as str"),
        ({"distill": 3}, "'distill' is a table of DistillConfig settings, not a value"),
    ],
)
def test_booleans_are_not_numbers_or_names_and_only_0_1_are_booleans(values: dict, message: str) -> None:
    # True is an int in Python: without the explicit checks num_clients=True would run one client
    with pytest.raises(ConfigError, match=message):
        parse_config(FederatedConfig, values)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(True, True), ("TRUE", True), ("1", True), ("yes", True), ("on", True), (1, True),
     (False, False), ("False", False), ("0", False), ("no", False), ("off", False), (0, False)],
)
def test_every_documented_boolean_spelling_is_read(raw: object, expected: bool) -> None:
    assert parse_config(DistillConfig, {"dsa": raw}).dsa is expected


def test_numbers_are_coerced_to_the_annotated_type() -> None:
    config = parse_config(FederatedConfig, {"alpha": 1, "num_clients": 4.0, "server_lr": "0.5", "model": 7})
    assert config.alpha == 1.0 and type(config.alpha) is float
    assert config.num_clients == 4 and type(config.num_clients) is int
    assert config.server_lr == 0.5 and config.model == "7"


@pytest.mark.parametrize("spelling", [None, "", "none", "None", "NULL"])
def test_optional_fields_read_none_spellings_as_none(spelling: object) -> None:
    config = parse_config(FederatedConfig, {"train_per_class": spelling, "test_per_class": "5"})
    assert config.train_per_class is None and config.test_per_class == 5


def test_data_dir_expands_the_home_folder(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from pathlib import Path

    from fedcond.config import DataConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_config(DataConfig, {"data-dir": "~/data"}).data_dir == tmp_path / "data"
    assert isinstance(parse_config(DataConfig, {"data_dir": "rel"}).data_dir, Path)


def test_toml_duplicate_spellings_are_refused(tmp_path) -> None:
    path = tmp_path / "dup.toml"
    path.write_text("num-clients = 3\nnum_clients = 5\n")
    with pytest.raises(ConfigError, match="'num_clients' is given twice"):
        load_toml(path)
    path.write_text("[distill]\nbatch-real = 3\nbatch_real = 5\n")
    with pytest.raises(ConfigError, match="'distill.batch_real' is given twice"):
        load_toml(path)


def test_toml_tables_become_dotted_keys_and_reach_nested_sections(tmp_path) -> None:
    path = tmp_path / "nested.toml"
    path.write_text("seed = 2\n[distill]\nipc = 4\n[distill.augment]\nlayout = \"sample\"\n[dp]\nepsilon = 3\n")
    flat = load_toml(path)
    assert flat == {"seed": 2, "distill.ipc": 4, "distill.augment.layout": "sample", "dp.epsilon": 3}
    config = parse_config(FederatedConfig, flat)
    assert config.distill.augment.layout == "sample" and config.distill.augment.scale == 1.2
    assert config.dp is not None and config.dp.epsilon == 3.0 and config.distill.iterations == 200


@pytest.mark.parametrize("cls_name", ["DataConfig", "AugmentConfig", "DistillConfig", "EvalConfig",
                                      "FederatedConfig", "ContinualConfig", "AuditConfig"])
def test_every_config_object_is_frozen_and_hashable(cls_name: str) -> None:
    import dataclasses

    import fedcond.config as config_module

    cls = getattr(config_module, cls_name)
    config = cls()
    name = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, name, getattr(config, name))
    assert hash(config) == hash(cls())
    dp = config_module.DPConfig(epsilon=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        dp.epsilon = 2.0  # type: ignore[misc]


def test_nested_unknown_keys_name_their_section() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) distill\.ipcs; valid keys: distill\.ipc"):
        parse_config(FederatedConfig, {"distill.ipcs": 3})
    with pytest.raises(ConfigError, match=r"distill\.augment\.layouts"):
        parse_config(FederatedConfig, {"distill": {"augment": {"layouts": "sample"}}})


def test_a_key_given_dotted_and_nested_is_refused_in_either_order() -> None:
    from fedcond.config import ConfigError, FederatedConfig, parse_config

    for values in ({"distill": {"ipc": 1}, "distill.ipc": 2}, {"distill.ipc": 2, "distill": {"ipc": 1}}):
        with pytest.raises(ConfigError, match="given twice"):
            parse_config(FederatedConfig, values)
    both = parse_config(FederatedConfig, {"distill.ipc": 2, "distill": {"iterations": 7}})
    assert both.distill.ipc == 2 and both.distill.iterations == 7


def test_a_deeper_key_given_twice_is_refused_too() -> None:
    from fedcond.config import ConfigError, FederatedConfig, parse_config

    with pytest.raises(ConfigError, match="given twice"):
        parse_config(FederatedConfig, {"distill": {"augment": {"layout": "class"}}, "distill.augment.layout": "sample"})


def test_a_quoted_number_in_a_config_file_is_refused_but_a_set_string_is_read(tmp_path) -> None:
    from fedcond.config import ConfigError, FederatedConfig, load_toml, parse_config

    path = tmp_path / "job.toml"
    path.write_text('num-clients = "3"\npartition = "iid"\n')
    with pytest.raises(ConfigError, match=r"'num_clients': the config file gives the string '3', expected int"):
        parse_config(FederatedConfig, load_toml(path))
    path.write_text('num-clients = 3\npartition = "iid"\n')
    assert parse_config(FederatedConfig, load_toml(path)).num_clients == 3
    assert parse_config(FederatedConfig, {"num-clients": "3"}).num_clients == 3  # --set values are strings


def test_a_number_for_a_boolean_in_a_config_file_is_refused_but_flowers_run_config_may_give_one(tmp_path) -> None:
    from fedcond.config import ConfigError, DistillConfig, load_toml, parse_config
    from fedcond.federated.policy import PolicyError, load_policy

    path = tmp_path / "job.toml"
    path.write_text("dsa = 0\nipc = 3\n")
    with pytest.raises(ConfigError, match=r"'dsa': the config file gives the number 0, expected true or false"):
        parse_config(DistillConfig, load_toml(path))
    path.write_text("dsa = false\nipc = 3\n")
    config = parse_config(DistillConfig, load_toml(path))
    assert config.dsa is False and config.ipc == 3 and type(config.ipc) is int
    assert parse_config(DistillConfig, {"dsa": 0}).dsa is False  # flwr run --run-config "distill.dsa=0"
    policy = tmp_path / "policy.toml"
    policy.write_text("[gate]\nenabled = 0\n")  # the release gate stays on: a typo is no switch
    with pytest.raises(PolicyError, match=r"'gate.enabled': the config file gives the number 0, expected true"):
        load_policy(policy)


# ---------------------------------------------------------------- configs that check themselves
def _config_classes() -> list[type]:
    import dataclasses

    import fedcond.config as config

    return [getattr(config, name) for name in config.__all__
            if isinstance(getattr(config, name), type) and dataclasses.is_dataclass(getattr(config, name))
            and name != "Range"]


def _ranged_fields() -> list[tuple[type, str, object]]:
    import dataclasses

    return [(cls, f.name, f.metadata["range"]) for cls in _config_classes() for f in dataclasses.fields(cls)
            if "range" in f.metadata]


#: settings under which a field's closed end is valid (a rule across fields forbids it otherwise)
_EDGE_CONTEXT: dict[tuple[str, str], dict[str, object]] = {
    ("ContinualConfig", "memory_per_class"): {"replay": "none"},
    ("FederatedConfig", "alpha"): {"partition": "shards"},
    ("FederatedConfig", "shards_per_client"): {"partition": "dirichlet"},
    ("RobustConfig", "reference_per_class"): {"outlier_nets": 2},
}


def _build(cls: type, **values: object) -> object:
    from fedcond.config import DPConfig

    base: dict[str, object] = {"epsilon": 1.0} if cls is DPConfig else {}
    return cls(**{**base, **values})


def _outside_and_edge(bounds) -> tuple[list[float], list[float]]:
    """Values just outside the interval, and its closed ends (which must pass)."""
    outside, edges = [], []
    if bounds.ge is not None:
        outside.append(bounds.ge - 1 if float(bounds.ge).is_integer() else bounds.ge - 1e-3)
        edges.append(bounds.ge)
    if bounds.gt is not None:
        outside.append(bounds.gt)
    if bounds.le is not None:
        outside.append(bounds.le + 1)
        edges.append(bounds.le)
    if bounds.lt is not None:
        outside.append(bounds.lt)
    if bounds.limit is not None:
        outside.append(bounds.limit + 1)
        edges.append(bounds.limit)
    return outside, edges


@pytest.mark.parametrize(("cls", "name", "bounds"), _ranged_fields(), ids=lambda v: getattr(v, "__name__", str(v)))
def test_every_ranged_field_refuses_values_outside_its_range_by_name(cls, name, bounds) -> None:
    import dataclasses
    import typing

    annotation = typing.get_type_hints(cls)[name]
    integer = int in (annotation, *typing.get_args(annotation))
    outside, edges = _outside_and_edge(bounds)
    assert outside, f"{cls.__name__}.{name} declares a range without a bound"
    for value in outside:
        value = int(value) if integer and float(value).is_integer() else value
        with pytest.raises(ConfigError, match=rf"'(\w+\.)*{name}' must (be|lie in)"):
            _build(cls, **{name: value})
    for value in edges:
        extra = _EDGE_CONTEXT.get((cls.__name__, name), {})
        built = _build(cls, **{name: int(value) if integer else value}, **extra)
        assert getattr(built, name) == value
        assert dataclasses.replace(built) == built
    with pytest.raises(ConfigError, match=rf"'(\w+\.)*{name}' must (be|lie in)"):  # replace() checks too
        dataclasses.replace(_build(cls), **{name: int(outside[0]) if integer else outside[0]})


def test_every_config_class_declares_ranges_for_its_numbers() -> None:
    import dataclasses
    import typing

    unchecked = []
    for cls in _config_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            numeric = {int, float} & {hints[f.name], *typing.get_args(hints[f.name])}
            if numeric and "range" not in f.metadata:
                unchecked.append(f"{cls.__name__}.{f.name}")
    assert unchecked == []


@pytest.mark.parametrize(
    ("cls", "name", "bad"),
    [("DistillConfig", "init", "zeros"), ("DistillConfig", "matching", "cosine"), ("AugmentConfig", "layout", "batch"),
     ("DPConfig", "accountant", "gdp"), ("ContinualConfig", "replay", "reservoir"),
     ("FederatedConfig", "partition", "stripes")],
)
def test_choices_are_literals_checked_when_built_and_when_parsed(cls: str, name: str, bad: str) -> None:
    import fedcond.config as config
    from fedcond.config import choices_of

    klass = getattr(config, cls)
    choices = choices_of(klass, name)
    with pytest.raises(ConfigError, match=rf"'(\w+\.)*{name}' must be one of {', '.join(choices)}; got '{bad}'"):
        _build(klass, **{name: bad})
    with pytest.raises(ConfigError, match=rf"must be one of {', '.join(choices)}"):
        parse_config(klass, {"epsilon": 1.0, name: bad} if cls == "DPConfig" else {name: bad})
    for good in choices:
        assert getattr(_build(klass, **{name: good}), name) == good
    with pytest.raises(KeyError, match="closed set of choices"):
        choices_of(klass, "seed" if cls != "AugmentConfig" else "scale")


def test_the_modules_that_dispatch_on_a_choice_take_it_from_the_config() -> None:
    from fedcond.config import AugmentConfig, ContinualConfig, DistillConfig, choices_of
    from fedcond.continual.policies import REPLAY_KINDS
    from fedcond.data.partition import PARTITION_METHODS
    from fedcond.distill.augment import LAYOUTS
    from fedcond.distill.dm import INITS
    from fedcond.distill.matching import MATCHINGS

    assert INITS == choices_of(DistillConfig, "init") and MATCHINGS == choices_of(DistillConfig, "matching")
    assert LAYOUTS == choices_of(AugmentConfig, "layout") and REPLAY_KINDS == choices_of(ContinualConfig, "replay")
    assert PARTITION_METHODS == choices_of(FederatedConfig, "partition")


def test_rules_across_fields_are_checked_when_built() -> None:
    from fedcond.config import ContinualConfig, DPConfig

    with pytest.raises(ConfigError, match="apply to FedCond's DP-DM only"):
        FederatedConfig(strategy="fedavg", dp=DPConfig(epsilon=1.0))
    with pytest.raises(ConfigError, match="GDumb trains on the memory alone"):
        ContinualConfig(replay="joint", gdumb=True)
    with pytest.raises(ConfigError, match="must be >= 1 for replay herding"):
        ContinualConfig(replay="herding", memory_per_class=0)
    assert ContinualConfig(replay="none", memory_per_class=0).memory_per_class == 0
    assert ContinualConfig(replay="herding", memory_per_class=0, max_memory=20).max_memory == 20


def test_every_number_has_an_upper_bound() -> None:
    import dataclasses

    unbounded = []
    for cls in _config_classes():
        for f in dataclasses.fields(cls):
            bounds = f.metadata.get("range")
            if bounds is not None and bounds.le is None and bounds.lt is None and bounds.limit is None:
                unbounded.append(f"{cls.__name__}.{f.name}")
    assert unbounded == [], "a huge value of these would reach torch or NumPy unchecked"


@pytest.mark.parametrize(
    ("cls", "values", "message"),
    [
        ("DistillConfig", {"ipc": "100000000000000000000"}, "'distill.ipc' must lie in [1, 10000], got 1000"),
        ("DistillConfig", {"iterations": 10**20}, "'distill.iterations' must lie in [0, 1000000000]"),
        ("DistillConfig", {"lr_img": "1e308"}, "'distill.lr_img' must lie in (0, 1000000], got 1e+308"),
        ("DistillConfig", {"seed": 2**64}, "'distill.seed' must lie in [0, 4294967295]"),
        ("FederatedConfig", {"seed": 2**32}, "'seed' must lie in [0, 4294967295]"),
        ("FederatedConfig", {"dp.epsilon": 1e308}, "'dp.epsilon' must lie in (0, 100], got 1e+308"),
        ("FederatedConfig", {"round_timeout": 1e300}, "'round_timeout' must lie in (0, 10000000]"),
        ("ContinualConfig", {"max_memory": 10**12}, "'max_memory' must lie in [1, 10000]"),
    ],
)
def test_huge_numbers_are_refused_by_key_with_the_allowed_range(cls: str, values: dict, message: str) -> None:
    import fedcond.config as config

    with pytest.raises(ConfigError) as exc:
        parse_config(getattr(config, cls), values)
    assert message in str(exc.value)


def test_a_value_below_the_range_is_told_its_lower_bound_and_one_above_the_limit_the_range() -> None:
    with pytest.raises(ConfigError, match=r"'distill.ipc' must be >= 1, got 0$"):
        parse_config(DistillConfig, {"ipc": 0})
    with pytest.raises(ConfigError, match=r"'distill.ipc' must lie in \[1, 10000\], got 10001$"):
        parse_config(DistillConfig, {"ipc": 10001})
    with pytest.raises(ConfigError, match=r"'dp.delta' must lie in \(0, 1\), got 1.0$"):
        parse_config(FederatedConfig, {"dp.epsilon": 1.0, "dp.delta": 1.0})


def test_the_largest_seed_derives_seeds_that_torch_takes() -> None:
    import torch

    from fedcond.config import MAX_SEED, MAX_STEPS, offset_seed

    # the largest derivation: a robust round's networks, (seed * 1000 + 700 + round) * 7919 + k
    torch.Generator().manual_seed((MAX_SEED * 1000 + 700 + MAX_STEPS) * 7919 + 1000)
    # a derived config (one client's round, one experience) stays valid at the edge
    assert DistillConfig(seed=offset_seed(MAX_SEED, 1000 * 7 + 3)).seed == 1000 * 7 + 2
    assert offset_seed(5, 1009) == 1014


def test_a_config_path_that_is_a_folder_or_not_utf8_is_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match=rf"config file {tmp_path} is a folder, not a TOML file"):
        load_toml(tmp_path)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"[distill]\nipc = 1\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin.toml is not UTF-8 text \(byte 0xe9 at offset 23\)"):
        load_toml(latin)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"": 3}, "config key '' is empty"),
        ({"distill.": 3}, "config key 'distill.' has an empty name"),
        ({"distill..ipc": 3}, "config key 'distill..ipc' has an empty name"),
    ],
)
def test_an_empty_key_or_key_part_is_named(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(FederatedConfig, values)


@pytest.mark.parametrize(
    "values",
    [
        {"distill.augment": "3"},
        {"distill.augment": "3", "distill.augment.scale": 2},
        {"distill.augment.scale": 2, "distill.augment": "3"},
    ],
)
def test_a_value_given_for_a_table_is_named_as_such_not_as_given_twice(values: dict) -> None:
    with pytest.raises(ConfigError, match="'distill.augment' is a table of") as exc:
        parse_config(FederatedConfig, values)
    assert "given twice" not in str(exc.value)


def test_ignored_keys_name_what_a_mode_does_not_read() -> None:
    from fedcond.config import ContinualConfig

    assert FederatedConfig().ignored_keys(["alpha", "rounds"]) == {}
    iid = FederatedConfig(partition="iid").ignored_keys(["alpha", "shards_per_client", "rounds"])
    assert set(iid) == {"alpha", "shards_per_client"} and "partition iid" in iid["alpha"]
    assert FederatedConfig(partition="shards").ignored_keys(["shards_per_client"]) == {}
    # the outlier rule's settings are read only with the rule on, the count cap's only with the robust rule on
    cap_only = FederatedConfig().ignored_keys(
        ["robust.outlier_margin", "robust.outlier_spread", "robust.count_cap_factor"])
    assert set(cap_only) == {"robust.outlier_margin", "robust.outlier_spread"} and "outlier_nets=0" in cap_only[
        "robust.outlier_margin"]
    judged = parse_config(FederatedConfig, {"robust.outlier_nets": 2})
    assert judged.ignored_keys(["robust.outlier_margin", "robust.outlier_spread"]) == {}
    off = parse_config(FederatedConfig, {"robust.enabled": False})
    assert set(off.ignored_keys(["robust.count_cap_factor", "robust.outlier_nets", "robust.enabled"])) == {
        "robust.count_cap_factor", "robust.outlier_nets"}

    distilled = ContinualConfig()
    assert set(distilled.ignored_keys(["distill.ipc", "distill.iterations", "gdumb_epochs", "lr"])) == {
        "distill.ipc", "gdumb_epochs"}
    random = ContinualConfig(replay="random")
    assert set(random.ignored_keys(["distill.iterations", "distill.augment.scale", "memory_per_class"])) == {
        "distill.iterations", "distill.augment.scale"}
    augmented = ContinualConfig(replay="random", augment_memory=True)
    assert augmented.ignored_keys(["distill.augment.scale"]) == {}  # the memory's transforms are DM's
    gdumb = ContinualConfig(gdumb=True)
    assert set(gdumb.ignored_keys(["epochs", "lr", "gdumb_epochs"])) == {"epochs", "lr"}
    assert set(ContinualConfig(replay="joint", memory_per_class=0).ignored_keys(["memory_per_class"])) == set()
    assert set(ContinualConfig(replay="joint").ignored_keys(["memory_per_class"])) == {"memory_per_class"}
    assert set(ContinualConfig(max_memory=20).ignored_keys(["memory_per_class", "max_memory"])) == {
        "memory_per_class"}
