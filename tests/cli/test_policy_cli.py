"""``fedcond policy FILE``: a node's policy checked before the node starts."""

from __future__ import annotations

import json

from fedcond.cli.main import main


def test_a_good_policy_prints_its_effective_rules(tmp_path, capsys):
    path = tmp_path / "policy.toml"
    path.write_text('allowed_init = ["noise"]\n[data]\ndataset = "digits"\n')
    assert main(["policy", str(path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["allowed_init"] == ["noise"] and printed["gate"]["action"] == "withhold"
    assert printed["permissive"] is False


def test_a_bad_policy_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "policy.toml"
    path.write_text("[dp]\nbudget_epsilon = 3.0\n")
    assert main(["policy", str(path)]) == 2
    err = capsys.readouterr().err
    assert "dp.ledger" in err and "Traceback" not in err


def test_a_ledger_of_another_data_source_is_refused_at_node_start(tmp_path, capsys):
    ledger = tmp_path / "ledger.json"
    ledger.write_text(json.dumps({"format": "fedcond-dp-ledger", "version": 1, "source": "f" * 64,
                                  "mechanism": "rdp", "history": [], "runs": []}))
    path = tmp_path / "policy.toml"
    path.write_text('[dp]\nbudget_epsilon = 3.0\nledger = "ledger.json"\n[data]\ndataset = "digits"\n')
    assert main(["policy", str(path)]) == 2
    assert "another data source" in capsys.readouterr().err
    ledger.write_text("{broken")
    assert main(["policy", str(path)]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_the_checkpoint_folder_is_created_or_refused_by_name(tmp_path, capsys):
    path = tmp_path / "policy.toml"
    path.write_text('[checkpoints]\nfolder = "state/condense"\n')
    assert main(["policy", str(path)]) == 0
    assert (tmp_path / "state" / "condense").is_dir()
    assert json.loads(capsys.readouterr().out)["checkpoints"]["folder"] == str(tmp_path / "state" / "condense")
    (tmp_path / "taken").write_text("a file, not a folder")
    path.write_text('[checkpoints]\nfolder = "taken"\n')
    assert main(["policy", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'checkpoints.folder': cannot create" in err and "Traceback" not in err


def test_a_ledger_folder_the_node_cannot_write_is_refused_with_or_without_a_data_table(tmp_path, capsys):
    (tmp_path / "afile").write_text("a file, not a folder")  # the machine runs as root: no chmod test
    path = tmp_path / "policy.toml"
    for data in ("", '[data]\ndataset = "digits"\n'):
        path.write_text(f'[dp]\nrequired = true\nbudget_epsilon = 5.0\nledger = "afile/l.json"\n{data}')
        assert main(["policy", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"the DP ledger's folder {tmp_path / 'afile'} cannot be created" in err
        assert "is a file, not a folder" in err and "Traceback" not in err


def test_a_ledger_folder_that_does_not_exist_yet_passes_and_is_not_created(tmp_path, capsys):
    path = tmp_path / "policy.toml"
    path.write_text('[dp]\nbudget_epsilon = 5.0\nledger = "state/ledger.json"\n')
    assert main(["policy", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["dp"]["ledger"] == str(tmp_path / "state" / "ledger.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.toml"]
