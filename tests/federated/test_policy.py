"""The client policy: parsing, contradictions, and every rule refusing what breaks it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcond.federated.policy import (
    DEFAULT_POLICY,
    ClientPolicy,
    PolicyError,
    PolicyViolation,
    check_request,
    load_policy,
    policy_from_mapping,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "client-policy.toml"
    path.write_text(text)
    return path


def test_default_policy_is_private():
    assert DEFAULT_POLICY.allowed_init == ("noise",)
    assert DEFAULT_POLICY.gate.enabled and DEFAULT_POLICY.gate.action == "withhold"
    assert not DEFAULT_POLICY.dp.honour_server_noise_seed
    assert not DEFAULT_POLICY.permissive


def test_file_round_trip_and_relative_paths(tmp_path):
    path = write(
        tmp_path,
        'allowed_init = ["noise", "real"]\nmin_iterations = 50\nserve = ["condense"]\n'
        '[dp]\nrequired = true\nmax_epsilon = 8.0\nbudget_epsilon = 20.0\nledger = "ledger.json"\n'
        '[gate]\naction = "refuse"\n[data]\ndataset = "digits"\n',
    )
    policy = load_policy(path)
    assert policy.allowed_init == ("noise", "real")
    assert policy.min_iterations == 50
    assert policy.serve == ("condense",)
    assert policy.dp.ledger == tmp_path.resolve() / "ledger.json"
    assert policy.dp.required and policy.dp.max_epsilon == 8.0
    assert policy.gate.action == "refuse"
    assert policy.data.dataset == "digits"
    assert not policy.permissive  # DP is required: real init is never used under DP
    as_dict = policy.as_dict()
    assert as_dict["serve"] == ["condense"] and as_dict["permissive"] is False


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("allowed_inits = ['noise']\n", "allowed_inits"),  # unknown key
        ("allowed_init = ['pixels']\n", "allowed_init"),
        ("allowed_init = []\n", "allowed_init"),
        ("serve = ['train', 'gossip']\n", "serve"),
        ("min_iterations = -1\n", "min_iterations"),
        ("[dp]\nrequired = true\nmax_epsilon = 0.0\n", "dp.max_epsilon"),
        ("[dp]\nbudget_epsilon = 5.0\n", "dp.ledger"),
        ("[dp]\nmax_epsilon = 9.0\nbudget_epsilon = 5.0\nledger = 'l.json'\n", "contradict"),
        ("[dp]\nbudget_delta = 1.5\n", "dp.budget_delta"),
        ("[gate]\naction = 'shrug'\n", "gate.action"),
        ("[gate]\nquantile = 0.0\n", "gate.quantile"),
        ("[data]\ndataset = 'nope'\n", "data.dataset"),
        ("[data]\ndata_dir = '/x'\n", "data.data_dir"),
        ("min_iterations = '5'\n", "min_iterations"),  # a quoted number in a file
        ("serve = []\n", "serve"),
        ("serve = ['evaluate']\n[dp]\nrequired = true\n", "contradict"),
        # an empty path (a template's empty variable) is not "no ledger", "no folder"
        ("[dp]\nledger = ''\n", "dp.ledger"),
        ("[data]\ndataset = 'digits'\ndata_dir = ''\n", "data.data_dir"),
        ("[checkpoints]\nfolder = ' '\n", "checkpoints.folder"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_policy_files_are_clear_errors(tmp_path, text, needle):
    with pytest.raises(PolicyError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        load_policy(write(tmp_path, text))


def test_missing_policy_file(tmp_path):
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "absent.toml")


def test_permissive_policies():
    assert policy_from_mapping({"allowed_init": ["real", "noise"]}).permissive
    assert policy_from_mapping({"gate.enabled": False}).permissive
    assert not policy_from_mapping({"allowed_init": ["noise"]}).permissive


@pytest.mark.parametrize(
    ("policy", "request_kwargs", "rule"),
    [
        (ClientPolicy(), {"action": "condense", "init": "real", "iterations": 200}, "allowed_init"),
        (ClientPolicy(), {"action": "condense", "init": "kmeans", "iterations": 200}, "allowed_init"),
        (ClientPolicy(min_iterations=100), {"action": "condense", "init": "noise", "iterations": 0}, "min_iterations"),
        (
            policy_from_mapping({"dp.required": True}),
            {"action": "condense", "init": "noise", "iterations": 10},
            "dp.required",
        ),
        (
            policy_from_mapping({"dp.max_epsilon": 2.0}),
            {"action": "condense", "init": "noise", "iterations": 10, "dp_epsilon": 8.0},
            "dp.max_epsilon",
        ),
        (
            ClientPolicy(),
            {"action": "condense", "init": "noise", "iterations": 10, "dp_epsilon": 1.0, "server_noise_seed": True},
            "dp.honour_server_noise_seed",
        ),
        (ClientPolicy(serve=("condense", "evaluate")), {"action": "train"}, "serve"),
        (ClientPolicy(), {"action": "train"}, "serve"),  # model updates are opt-in
        (ClientPolicy(serve=("train",)), {"action": "condense", "init": "noise", "iterations": 10}, "serve"),
        # a model update is not a DP release, whatever else the node serves
        (policy_from_mapping({"serve": ["condense", "train"], "dp.required": True}), {"action": "train"},
         "dp.required"),
        # without a max_epsilon the default cap holds: a huge epsilon would skip the release gate
        (ClientPolicy(), {"action": "condense", "init": "noise", "iterations": 10, "dp_epsilon": 1e6},
         "dp.max_epsilon"),
        (ClientPolicy(), {"action": "condense", "init": "noise", "iterations": 10, "dp_epsilon": 1.0,
                          "dp_delta": 0.5}, "dp.budget_delta"),
        # a server-chosen embedding network can make a non-DP upload a projection of the images
        (ClientPolicy(), {"action": "condense", "init": "noise", "iterations": 10, "server_embedder": True},
         "accept_server_embedder"),
        # an evaluation's exact accuracy on the node's data is not a DP release
        (policy_from_mapping({"dp.required": True}), {"action": "evaluate"}, "dp.required"),
    ],
)
def test_each_rule_refuses_the_request_that_breaks_it(policy, request_kwargs, rule):
    with pytest.raises(PolicyViolation) as info:
        check_request(policy, **request_kwargs)
    assert info.value.rule == rule
    assert repr(rule) in str(info.value)


@pytest.mark.parametrize(
    ("policy", "request_kwargs"),
    [
        (ClientPolicy(), {"action": "condense", "init": "noise", "iterations": 0}),
        (ClientPolicy(min_iterations=100), {"action": "condense", "init": "noise", "iterations": 100}),
        # DP-DM starts from noise whatever init the request names
        (ClientPolicy(), {"action": "condense", "init": "real", "iterations": 10, "dp_epsilon": 1.0}),
        (policy_from_mapping({"dp.required": True, "dp.max_epsilon": 2.0}),
         {"action": "condense", "init": "noise", "iterations": 10, "dp_epsilon": 2.0}),
        (policy_from_mapping({"dp.honour_server_noise_seed": True}),
         {"action": "condense", "init": "noise", "iterations": 10, "dp_epsilon": 1.0, "server_noise_seed": True}),
        (ClientPolicy(serve=("condense", "train")), {"action": "train"}),
        (ClientPolicy(), {"action": "evaluate"}),
        (ClientPolicy(), {"action": "condense", "init": "noise", "iterations": 10, "dp_epsilon": 10.0,
                          "dp_delta": 1e-5}),
        (policy_from_mapping({"allowed_init": ["real", "noise"]}),
         {"action": "condense", "init": "real", "iterations": 0}),
        (policy_from_mapping({"accept_server_embedder": True}),
         {"action": "condense", "init": "noise", "iterations": 10, "server_embedder": True}),
        # the DP guarantee holds whatever network embeds the images
        (ClientPolicy(), {"action": "condense", "init": "noise", "iterations": 10, "dp_epsilon": 1.0,
                          "server_embedder": True}),
    ],
)
def test_requests_that_keep_the_rules_are_served(policy, request_kwargs):
    check_request(policy, **request_kwargs)


def test_a_run_cut_short_by_its_time_budget_is_refused_under_min_iterations():
    from fedcond.federated.policy import check_iterations_run

    check_iterations_run(ClientPolicy(min_iterations=100), iterations_run=100)
    with pytest.raises(PolicyViolation) as info:
        check_iterations_run(ClientPolicy(min_iterations=100), iterations_run=1)
    assert info.value.rule == "min_iterations" and "stopped after 1 iterations" in str(info.value)


def test_model_updates_make_a_policy_permissive_unless_dp_is_required():
    from fedcond.federated.policy import ACTIONS, DEFAULT_SERVE

    assert "train" not in DEFAULT_SERVE and not DEFAULT_POLICY.permissive
    assert ClientPolicy(serve=ACTIONS).permissive
    assert not policy_from_mapping({"serve": list(ACTIONS), "dp.required": True}).permissive
    assert policy_from_mapping({"accept_server_embedder": True}).permissive


def test_simulated_clients_serve_train_only_for_weight_averaging_without_a_named_policy():
    from fedcond.federated.policy import simulated_client_policy

    assert simulated_client_policy(None, strategy="fedcond") == DEFAULT_POLICY
    assert "train" in simulated_client_policy(None, strategy="fedavg").serve
    named = ClientPolicy(serve=("condense",))
    assert simulated_client_policy(named, strategy="fedavg") is named
