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
    # "[dp]" with its keys commented out used to vanish: the run went ahead without privacy
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
