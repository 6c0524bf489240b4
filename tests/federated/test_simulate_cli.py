"""`fedcond simulate` end to end (DESIGN.md section 3 contract) and its bad-input errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fedcond.cli.main import main

REQUIRED = {
    "strategy", "dataset", "num_clients", "partition", "alpha", "rounds", "test_accuracy",
    "uplink_bytes", "downlink_bytes", "wall_seconds", "history",
}
SMALL = ["--ipc", "2", "--iterations", "3", "--set", "server-epochs=20", "--set", "distill.mixed-precision=false",
         "--device", "cpu"]


SLOW = pytest.mark.skipif(
    os.environ.get("FEDCOND_SLOW") != "1",
    reason="Ray start-up makes this 1-3 min on 2 busy cores; set FEDCOND_SLOW=1 to run it",
)


@pytest.mark.slow
@SLOW
def test_one_shot_on_digits_with_four_ray_clients(tmp_path):
    out = tmp_path / "run"
    code = main(["simulate", "--dataset", "digits", "--num-clients", "4", "--partition", "dirichlet", "--alpha", "0.1",
                 "--rounds", "1", *SMALL, "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert REQUIRED <= set(metrics)
    assert metrics["strategy"] == "fedcond" and metrics["num_clients"] == 4 and metrics["rounds"] == 1
    assert (out / "accuracy.png").stat().st_size > 0
    round1 = metrics["history"][1]
    assert round1["accepted"] == 4 and round1["dropped"] == {}
    assert metrics["test_accuracy"] > 0.2, "a trained model beats chance (0.1) on digits"
    # every byte each direction is accounted per round and in total
    assert metrics["uplink_bytes"] == sum(h["uplink_bytes"] for h in metrics["history"]) > 0
    assert metrics["downlink_bytes"] == sum(h["downlink_bytes"] for h in metrics["history"]) > 0


def test_one_shot_end_to_end_in_process_with_a_fedavg_comparison(tmp_path):
    out = tmp_path / "inproc"
    code = main(["simulate", "--engine", "inprocess", "--num-clients", "4", "--partition", "dirichlet",
                 "--alpha", "0.1", *SMALL, "--compare", "fedavg=2", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert REQUIRED <= set(metrics)
    assert metrics["strategy"] == "fedcond" and metrics["history"][1]["accepted"] == 4
    assert metrics["test_accuracy"] > 0.2, "a trained model beats chance (0.1) on digits"
    assert metrics["uplink_bytes"] == sum(h["uplink_bytes"] for h in metrics["history"]) > 0
    assert (out / "accuracy.png").stat().st_size > 0
    fedavg = metrics["runs"]["fedavg"]
    assert fedavg["rounds"] == 2 and len(fedavg["history"]) == 3
    # FedAvg ships the whole model both ways every round: far more than a few synthetic images
    assert fedavg["uplink_bytes"] > 20 * metrics["uplink_bytes"]
    assert metrics["comparison"]["fedavg"]["uplink_ratio_to_first"] > 20


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "nonsense=1"], "unknown config key(s) nonsense"),
        (["--set", "rounds=many"], "cannot read 'many' as int"),
        (["--num-clients", "0"], "must be >= 1"),
        (["--config", "missing.toml"], "does not exist"),
        (["--set", "strategy=fedsgd"], "is not one of fedcond, fedavg, fedprox"),
        (["--set", "partition=stripes"], "'partition' must be one of iid, dirichlet, shards; got 'stripes'"),
        (["--alpha", "0"], "'alpha' must be > 0"),
        (["--dataset", "mnist", "--data-dir", "/nonexistent"], "/nonexistent"),
        # --set values arrive as strings and still meet the CLI's range checks
        (["--set", "distill.ipc=0"], "'distill.ipc' must be >= 1"),
        (["--set", "rounds=0"], "'rounds' must be >= 1"),
        (["--set", "fraction_train=0"], "'fraction_train' must lie in (0, 1]"),
        (["--set", "min_reply_fraction=2"], "'min_reply_fraction' must lie in [0, 1]"),
        (["--set", "min_partition_size=0"], "'min_partition_size' must be >= 1"),
        (["--strategy", "fedavg", "--set", "dp.epsilon=8"], "dp.*' apply to FedCond's DP-DM only"),
        # an infeasible split is found once, before any client starts (not by every client, each
        # after seconds of redraws, as 100 dropped replies)
        (["--num-clients", "3", "--set", "min_partition_size=1000"], "min_partition_size=1000 x 3 clients exceeds"),
        (["--num-clients", "100", "--alpha", "0.001"], "gave every one of 100 clients >= 10 samples"),
        # run options are flags: --set resume=true would be ignored, --set out=... overridden by --out
        (["--set", "resume=true"], "--set: 'resume' is not a config key but a command-line option: use the flag "
                                   "--resume"),
        (["--engine", "inprocess", "--cpus-per-client", "2"],
         "--cpus-per-client: Ray settings; --engine inprocess runs"),
        (["--engine", "inprocess", "--max-concurrent-clients", "4"], "--max-concurrent-clients: Ray settings"),
        (["--set", "out=runs/elsewhere"], "'out' is not a config key but a command-line option: use the flag --out"),
        # settings the partition or the dataset does not read are refused, not recorded as if used
        (["--partition", "iid", "--alpha", "0.5"], "--alpha 0.5 has no effect: it is the Dirichlet concentration, "
                                                   "and partition iid draws none"),
        (["--set", "partition=shards", "--set", "alpha=0.5"], "--set alpha=0.5 has no effect"),
        (["--set", "shards_per_client=3"], "--set shards_per_client=3 has no effect: it sizes the shards partition"),
        (["--data-dir", "/data"], "--data-dir /data: dataset digits is bundled with scikit-learn and reads no data "
                                  "folder"),
        (["--set", "download=true"], "--set download=true: dataset digits is bundled"),
        # epsilon 0 spells "no DP" in Flower's run config only: here it would silently drop every dp.* key
        (["--set", "dp.epsilon=0"], "dp.epsilon must be > 0, got 0: a run without DP gives no dp.* key at all"),
        (["--set", "dp.epsilon=-1", "--set", "dp.delta=1e-6"], "dp.epsilon must be > 0, got -1"),
        (["--set", "=3"], "--set '=3' has no key before '='"),
        (["--attackers", "0"], "--attackers needs --attack KIND"),
        (["--attack", "label-flip", "--attackers", "0"], "--attackers 0: no client would attack"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, capsys, argv, message):
    code = main(["simulate", *argv, "--out", str(tmp_path / "bad")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-concurrent-clients", "0"], "argument --max-concurrent-clients: must lie in [1, 4096], got 0"),
        (["--cpus-per-client", str(10**20)], "argument --cpus-per-client: must lie in [1, 4096]"),
        (["--cpus-per-client", "two"], "argument --cpus-per-client: expected a whole number, got 'two'"),
        (["--seed", "5000000000"], "argument --seed: must lie in [0, 4294967295], got 5000000000"),
        (["--seed", "-3"], "argument --seed: must lie in [0, 4294967295], got -3"),
    ],
)
def test_ray_counts_out_of_range_are_refused_by_the_parser(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", *argv, "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "dp.epsilon=1", "--set", "dp.delta=2"], "config key 'dp.delta' must lie in (0, 1), got 2.0"),
        (["--set", "dp.epsilon=1e308"], "config key 'dp.epsilon' must lie in (0, 100]"),
        (["--set", "dp.epsilon=1", "--set", "dp.clip_norm=0"], "config key 'dp.clip_norm' must be > 0"),
    ],
)
def test_dp_settings_fail_before_the_run_folder_and_the_simulation_engine(tmp_path, capsys, monkeypatch, argv,
                                                                          message):
    import fedcond.cli.simulate as simulate_cli

    def no_folder(*args, **kwargs):
        raise AssertionError("the run folder was prepared before the settings were checked")

    monkeypatch.setattr(simulate_cli, "prepare_run_folder", no_folder)
    assert main(["simulate", *argv, "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_one_clear_error(tmp_path, capsys):
    assert main(["simulate", "--device", "cuda", "--out", str(tmp_path / "cuda")]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err
    assert not (tmp_path / "cuda").exists(), "refused before the run folder and the simulation engine"


def test_a_run_where_every_client_fails_reports_no_accuracy_and_fails(tmp_path, capsys, monkeypatch):
    # every client errors out (in-process engine: the clients run here), so no round trains and
    # the untrained model's accuracy must not be reported
    import fedcond.federated.client_app as client_app

    def crash(*args, **kwargs):
        raise RuntimeError("client out of memory")

    monkeypatch.setattr(client_app, "condense_partition", crash)
    out = tmp_path / "failed"
    code = main(["simulate", "--engine", "inprocess", "--num-clients", "3", *SMALL, "--out", str(out)])
    assert code == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] is None and metrics["trained_rounds"] == 0
    assert metrics["history"][1]["accepted"] == 0 and len(metrics["history"][1]["dropped"]) == 3
    assert "no round of fedcond trained the global model" in " ".join(capsys.readouterr().err.split())


def test_config_file_seed_and_device_stand_unless_a_flag_overrides_them(tmp_path):
    from fedcond.cli.main import build_parser
    from fedcond.cli.simulate import _mapping

    config = tmp_path / "job.toml"
    config.write_text('seed = 7\ndevice = "cpu"\nnum_clients = 3\n[distill]\nipc = 2\n')
    parser = build_parser()
    from fedcond.federated.job import job_from_mapping

    def seeds(*argv: str) -> tuple[int, int, str]:
        job = job_from_mapping(_mapping(parser.parse_args(["simulate", *argv])))
        return job.federated.seed, job.federated.distill.seed, job.device

    assert seeds("--config", str(config)) == (7, 7, "cpu")
    assert seeds("--config", str(config), "--seed", "3", "--device", "auto") == (3, 3, "auto")
    assert seeds() == (0, 0, "auto")
    # --set seed=N re-seeds the clients' DM too (distill.seed does not stay at 0) ...
    assert seeds("--set", "seed=5") == (5, 5, "auto")
    assert seeds("--config", str(config), "--set", "seed=9") == (9, 9, "cpu")
    # ... unless distill.seed is set on its own; -1 (pyproject.toml's run config) follows seed
    assert seeds("--set", "seed=5", "--set", "distill.seed=2") == (5, 2, "auto")
    assert seeds("--set", "seed=5", "--set", "distill.seed=-1") == (5, 5, "auto")


def test_flwr_run_config_seed_reseeds_the_clients_dm():
    import tomllib

    from fedcond.config import _flatten_mapping
    from fedcond.federated.job import job_from_mapping

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    run_config = _flatten_mapping(pyproject["tool"]["flwr"]["app"]["config"])
    assert job_from_mapping(run_config).federated.distill.seed == 0
    assert job_from_mapping({**run_config, "seed": 4}).federated.distill.seed == 4  # --run-config seed=4


def test_a_dp_job_compared_with_fedavg_runs_the_baseline_without_dp(tmp_path, capsys):
    out = tmp_path / "dp-compare"
    code = main(["simulate", "--engine", "inprocess", "--num-clients", "2", *SMALL, "--set", "distill.init=noise",
                 "--set", "dp.epsilon=8", "--compare", "fedavg=1", "--out", str(out)])
    assert code == 0
    assert "fedavg runs without DP" in " ".join(capsys.readouterr().err.split())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epsilon"] <= 8.0
    assert not any(k.startswith("dp") for k in metrics["runs"]["fedavg"]["config"])


def test_the_default_policy_lets_no_real_image_reach_the_server(tmp_path, capsys):
    out = tmp_path / "refused"
    code = main(["simulate", "--engine", "inprocess", "--num-clients", "3", "--partition", "iid", *SMALL,
                 "--set", "distill.iterations=0", "--set", "distill.init=real", "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert "every client refused the request by its policy" in err and "'allowed_init'" in err
    metrics = json.loads((out / "metrics.json").read_text())  # written all the same
    assert (metrics["accepted"], metrics["refused"], metrics["dropped"]) == (0, 3, 0)
    assert all("'allowed_init'" in reason for reason in metrics["history"][1]["refused"].values())
    assert metrics["uplink_bytes"] == 0 and not (out / "uploads").exists()
    assert metrics["client_policy"]["permissive"] is False


def test_a_permissive_policy_file_lets_real_init_through_and_the_run_says_so(tmp_path, capsys):
    policy = tmp_path / "permissive.toml"
    policy.write_text('allowed_init = ["real", "noise"]\n[gate]\nenabled = false\n')
    out = tmp_path / "permissive"
    code = main(["simulate", "--engine", "inprocess", "--num-clients", "3", "--partition", "iid", *SMALL,
                 "--set", "distill.iterations=0", "--set", "distill.init=real", "--client-policy", str(policy),
                 "--out", str(out)])
    assert code == 0
    assert "client policy of fedcond is permissive" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accepted"] == 3 and metrics["client_policy"]["permissive"] is True
    assert metrics["client_policy"]["file"] == str(policy)
    uploads = sorted((out / "uploads" / "round-1").glob("client-*.npz"))
    assert len(uploads) == 3
    from fedcond.data import load_dataset
    from fedcond.distill.synthetic import SyntheticSet

    train = load_dataset("digits").train
    received = SyntheticSet.load(uploads[0])  # the format fedcond audit reads
    assert received.meta["dataset"] == "digits" and received.meta["round"] == 1
    # zero iterations from real images: the server holds exact training images, as the policy allowed
    flat = train.images.flatten(1)
    assert all(bool((flat == image.flatten()).all(1).any()) for image in received.images)


def test_a_fedavg_run_serves_model_updates_only_without_a_named_policy_and_says_so(tmp_path, capsys):
    fedavg = ["simulate", "--engine", "inprocess", "--num-clients", "2", "--partition", "iid", "--strategy",
              "fedavg", "--rounds", "1", "--set", "local-epochs=1", "--device", "cpu"]
    out = tmp_path / "fedavg"
    assert main([*fedavg, "--out", str(out)]) == 0
    assert "client policy of fedavg is permissive" in capsys.readouterr().err
    policy = json.loads((out / "metrics.json").read_text())["client_policy"]
    assert "train" in policy["serve"] and policy["permissive"] is True and policy["file"] is None
    # a node file without train is used as written: every client refuses the baseline, by name
    named = tmp_path / "no-updates.toml"
    named.write_text('serve = ["condense", "evaluate"]\n')
    refused = tmp_path / "refused"
    assert main([*fedavg, "--client-policy", str(named), "--out", str(refused)]) == 1
    assert "refused the request by its policy" in capsys.readouterr().err
    assert json.loads((refused / "metrics.json").read_text())["refused"] == 2


def test_the_default_policy_gates_every_upload_and_records_it(tmp_path):
    out = tmp_path / "gated"
    code = main(["simulate", "--engine", "inprocess", "--num-clients", "3", "--partition", "iid", *SMALL,
                 "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["clients"]) == {"1000", "1001", "1002"}
    for facts in metrics["clients"].values():
        assert facts["round"] == 1 and facts["gate-uploaded"] + facts["gate-withheld"] == 20
    assert len(list((out / "uploads" / "round-1").glob("client-*.npz"))) == 3


def test_a_bad_client_policy_file_is_one_line_before_any_client_runs(tmp_path, capsys):
    policy = tmp_path / "bad.toml"
    policy.write_text('allowed_init = ["pixels"]\n')
    argv = ["simulate", "--engine", "inprocess", "--client-policy", str(policy), "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "allowed_init" in capsys.readouterr().err


def test_a_policy_whose_ledger_cannot_be_written_stops_the_simulation_before_any_round(tmp_path, capsys):
    (tmp_path / "afile").write_text("a file, not a folder")
    policy = tmp_path / "policy.toml"
    policy.write_text('[dp]\nbudget_epsilon = 5.0\nledger = "afile/l.json"\n')
    code = main(["simulate", "--engine", "inprocess", "--client-policy", str(policy), "--out", str(tmp_path / "o")])
    assert code != 0
    err = capsys.readouterr().err
    assert "--client-policy" in err and "is a file, not a folder" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_a_run_the_robust_rule_fails_closed_names_the_alarm(tmp_path, capsys, caplog):
    # five label flippers of ten outvote the honest holders: the outlier rule judged by clients
    # stops before rejecting half of the clients, and the run says so instead of "every reply dropped"
    out = tmp_path / "alarm"
    code = main(["simulate", "--engine", "inprocess", "--attack", "label-flip", "--attackers", "5",
                 "--set", "robust.outlier_nets=2", "--set", "distill.iterations=20", "--set", "server_epochs=10",
                 "--out", str(out)])
    assert code == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] is None and metrics["history"][1]["robust_alarm"]
    err = " ".join(capsys.readouterr().err.split())
    assert "the robust rule failed closed (it would reject 5 or more of the 10 client sets" in err
    said = [r for r in caplog.records if "no round trained the global model" in r.getMessage()]
    assert len(said) == 1 and "failed closed" in said[0].getMessage()  # said once, at the end of the run


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--attack", "typo"], "--attack: unknown attack 'typo'"),
        (["--client-policy", "missing-policy.toml"], "--client-policy missing-policy.toml"),
        (["--compare", "fedavgg=2"], "--compare"),
        (["--num-clients", "2000"], "into 2000 non-empty partitions"),
    ],
)
def test_overwrite_with_a_bad_setting_keeps_the_earlier_run(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    earlier = {"metrics.json": "{}", "uploads/round-1/client-0.npz": "set", "checkpoints/fedcond/state.json": "{}",
               "client-checkpoints/node-0/dm.npz": "state", "runs/fedavg/metrics.json": "{}"}
    for name, text in earlier.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    assert main(["simulate", "--engine", "inprocess", *SMALL, "--out", str(out), "--overwrite", *argv]) == 2
    assert message in capsys.readouterr().err
    assert {name: (out / name).read_text() for name in earlier} == earlier


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--strategy", "fedavg", "--ipc", "7"], "--ipc 7 has no effect: it is read by fedcond only"),
        (["--strategy", "fedavg", "--set", "robust.outlier_nets=2"], "--set robust.outlier_nets=2 has no effect"),
        (["--strategy", "fedavg", "--set", "server-epochs=3"], "--set server-epochs=3 has no effect"),
        (["--set", "proximal-mu=0.5"], "--set proximal-mu=0.5 has no effect: it is read by fedprox only"),
        (["--set", "local-epochs=4"], "--set local-epochs=4 has no effect"),
        (["--strategy", "fedavg", "--set", "trimmed-beta=0.1", "--compare", "krum=2"],
         "--set trimmed-beta=0.1 has no effect: it is read by fedtrimmedavg only, and this command runs fedavg, krum"),
    ],
)
def test_a_key_no_run_of_the_command_reads_is_refused(tmp_path, capsys, argv, message):
    assert main(["simulate", "--engine", "inprocess", "--out", str(tmp_path / "x"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_key_one_compared_run_reads_is_kept_and_a_files_unread_keys_are_named(tmp_path, capsys, monkeypatch):
    from fedcond.cli import simulate as command

    monkeypatch.setattr(command, "prepare_run_folder", lambda *a, **k: pytest.skip("checked: the run would start"))
    config = tmp_path / "job.toml"
    config.write_text('strategy = "fedcond"\nlocal-epochs = 3\n[robust]\noutlier_margin = 2.0\n')
    with pytest.raises(pytest.skip.Exception):
        main(["simulate", "--engine", "inprocess", "--config", str(config), "--out", str(tmp_path / "y")])
    err = "".join(capsys.readouterr())
    assert "robust.outlier_margin has no effect" in err and "local_epochs has no effect" in err
    with pytest.raises(pytest.skip.Exception):
        main(["simulate", "--engine", "inprocess", "--config", str(config), "--compare", "fedprox=2",
              "--set", "proximal-mu=0.5", "--out", str(tmp_path / "z")])
    err = "".join(capsys.readouterr())
    assert "local_epochs has no effect" not in err and "proximal" not in err


def test_a_server_embedder_the_clients_would_refuse_is_an_error_before_the_run(tmp_path, capsys):
    argv = ["simulate", "--engine", "inprocess", "--rounds", "2", "--set", "server-embedder=true"]
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    printed = "".join(capsys.readouterr())
    assert "'accept_server_embedder'" in printed and "run with DP" in printed
    assert not (tmp_path / "x" / "metrics.json").exists()
