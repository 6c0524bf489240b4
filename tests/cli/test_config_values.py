"""The one builder of every command's config values: file, then flags, then ``--set``."""

from __future__ import annotations

import argparse

import pytest

from fedcond.cli.common import CommandError, add_config_arguments, config_values
from fedcond.config import ConfigError


def test_a_flag_wins_over_the_file_and_set_wins_over_both(tmp_path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('seed = 1\nname = "file"\n[distill]\nipc = 2\nbatch-real = 8\nlr_img = 0.5\n')
    values = config_values(
        file=config,
        flags={"distill.ipc": 3, "distill.batch_real": 16, "seed": None},
        overrides=["distill.batch-real=32"],
    )
    assert values["distill.ipc"] == 3  # flag over file
    assert values["distill.batch_real"] == "32"  # --set over flag and file, whatever the spelling
    assert values["distill.lr_img"] == 0.5 and values["seed"] == 1  # file; a None flag was not given
    assert values["name"] == "file"


def test_defaults_stand_in_for_a_missing_file(tmp_path) -> None:
    assert config_values(file=None, defaults={"rounds": 1}, flags={"alpha": 0.5}, overrides=None) == {
        "rounds": 1,
        "alpha": 0.5,
    }
    config = tmp_path / "c.toml"
    config.write_text("alpha = 0.1\n")
    assert config_values(file=config, defaults={"rounds": 1}, flags={}, overrides=None) == {"alpha": 0.1}


def test_a_section_table_is_read_without_its_prefix_and_keys_beside_it_are_refused(tmp_path) -> None:
    scoped = tmp_path / "scoped.toml"
    scoped.write_text('[continual]\nseed = 5\n[continual.distill]\nipc = 2\n')
    assert config_values(file=scoped, section="continual", flags={}, overrides=None) == {"seed": 5, "distill.ipc": 2}
    flat = tmp_path / "flat.toml"
    flat.write_text("seed = 5\n")
    assert config_values(file=flat, section="continual", flags={}, overrides=None) == {"seed": 5}
    mixed = tmp_path / "mixed.toml"
    mixed.write_text('seed = 7\n[continual]\nreplay = "random"\n')
    with pytest.raises(CommandError, match=r"keys outside the \[continual\] table would be ignored: seed"):
        config_values(file=mixed, section="continual", flags={}, overrides=None)


def test_bad_sources_are_named(tmp_path) -> None:
    with pytest.raises(CommandError, match="--set expects key=value, got 'ipc'"):
        config_values(file=None, flags={}, overrides=["ipc"])
    with pytest.raises(CommandError, match="--set '=3' has no key before '='"):
        config_values(file=None, flags={}, overrides=["=3"])
    with pytest.raises(ConfigError, match="does not exist"):
        config_values(file=tmp_path / "missing.toml", flags={}, overrides=None)
    with pytest.raises(ConfigError, match="is a folder, not a TOML file"):
        config_values(file=tmp_path, flags={}, overrides=None)


def test_add_config_arguments_gives_config_and_repeatable_set() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, config_help="file", set_help="pairs")
    args = parser.parse_args(["--config", "c.toml", "--set", "a=1", "--set", "b=2"])
    assert str(args.config) == "c.toml" and args.overrides == ["a=1", "b=2"]
    assert parser.parse_args([]).overrides is None and parser.parse_args([]).config is None


def test_a_run_option_given_as_a_key_is_refused_naming_its_flag(tmp_path) -> None:
    with pytest.raises(CommandError, match="--set: 'resume' is not a config key but a command-line option: use "
                       "the flag --resume"):
        config_values(file=None, flags={}, overrides=["resume=true"], run_options={"resume": "--resume"})
    with pytest.raises(CommandError, match="'out' is not a config key .* use the flag --out"):
        config_values(file=None, flags={}, overrides=["out=runs/x"])
    config = tmp_path / "c.toml"
    config.write_text('overwrite = true\n')
    with pytest.raises(CommandError, match=f"config file {config}: 'overwrite' is not a config key"):
        config_values(file=config, flags={}, overrides=None)
    # a key the command reads stays a key
    assert config_values(file=None, flags={}, overrides=["device=cpu"], run_options={}) == {"device": "cpu"}
