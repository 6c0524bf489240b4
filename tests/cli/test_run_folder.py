"""Run folders: Flower/Ray/matplotlib state follows the current command's --out, user settings win."""

from __future__ import annotations

import os

import pytest

import fedcond.cli.common as common
from fedcond.cli.common import CommandError, prepare_run_folder


@pytest.fixture()
def clean_environment(monkeypatch):
    for key in ("MPLCONFIGDIR", "FLWR_HOME", "RAY_TMPDIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(common, "_OWN_ENVIRONMENT", {})


def test_a_second_command_in_one_process_keeps_its_state_in_its_own_folder(tmp_path, clean_environment) -> None:
    prepare_run_folder(tmp_path / "first")
    assert os.environ["FLWR_HOME"] == str((tmp_path / "first" / ".state" / "flwr").resolve())
    prepare_run_folder(tmp_path / "second")
    assert os.environ["FLWR_HOME"] == str((tmp_path / "second" / ".state" / "flwr").resolve())
    assert os.environ["RAY_TMPDIR"] == str((tmp_path / "second" / ".state" / "ray").resolve())


def test_a_value_the_user_set_is_never_replaced(tmp_path, clean_environment, monkeypatch) -> None:
    monkeypatch.setenv("RAY_TMPDIR", "/somewhere/of/mine")
    prepare_run_folder(tmp_path / "run")
    prepare_run_folder(tmp_path / "again")
    assert os.environ["RAY_TMPDIR"] == "/somewhere/of/mine"


def test_an_empty_folder_or_one_without_a_run_is_accepted(tmp_path, clean_environment) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert prepare_run_folder(tmp_path) == tmp_path
    with pytest.raises(CommandError, match="already holds a run"):
        (tmp_path / "metrics.json").write_text("{}")
        prepare_run_folder(tmp_path)
    assert prepare_run_folder(tmp_path, overwrite=True) == tmp_path


def test_an_out_the_system_refuses_is_named_with_the_flag_and_the_path(tmp_path, clean_environment, monkeypatch):
    (tmp_path / "file").write_text("")
    under_a_file = tmp_path / "file" / "run"
    with pytest.raises(CommandError, match=rf"--out {under_a_file}: cannot create the run folder \(Not a directory\)"):
        prepare_run_folder(under_a_file)
    monkeypatch.setattr(common.os, "access", lambda path, mode: False)  # as for a user without write permission
    with pytest.raises(CommandError, match=rf"--out {tmp_path / 'ro'}: the run folder is not writable"):
        prepare_run_folder(tmp_path / "ro")
