"""Client side without Ray: partitions missing classes, the ClientApp handlers, Context.state."""

from __future__ import annotations

import logging

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedcond.config import DistillConfig
from fedcond.data import get_spec, load_dataset
from fedcond.distill.dm import initial_synthetic
from fedcond.distill.synthetic import SyntheticSet
from fedcond.federated.client import client_partition, condense_partition, initial_images, local_train
from fedcond.federated.client_app import app, build_client_app
from fedcond.federated.job import job_from_mapping, job_to_mapping
from fedcond.federated.policy import policy_from_mapping
from fedcond.federated.records import (
    CLASS_COUNTS,
    CONDENSE_ACTION,
    CONFIG_KEY,
    DP_LEDGER_KEY,
    EPSILON,
    MEMORY_KEY,
    METRICS_KEY,
    MODEL_KEY,
    NUM_EXAMPLES,
    POLICY_REFUSED,
    SYNTHETIC_KEY,
    model_to_record,
    synthetic_from_record,
)
from fedcond.federated.validation import validate_reply
from fedcond.models import get_model

JOB = {"num_clients": 4, "alpha": 0.1, "distill.ipc": 3, "distill.iterations": 2, "device": "cpu",
       "distill.mixed_precision": False}


def test_partition_missing_classes_condenses_only_present_ones():
    job = job_from_mapping(JOB)
    data = client_partition(job, partition_id=1, num_partitions=4)
    counts = data.class_counts()
    assert (counts == 0).any(), "Dirichlet(0.1) leaves this client without some classes"
    outcome = condense_partition(data, distill=job.federated.distill)
    held = outcome.synthetic.class_counts()
    assert torch.equal(held > 0, counts > 0)
    assert set(held[counts > 0].tolist()) == {3}
    assert outcome.skipped_classes == [c for c in range(10) if counts[c] == 0]


def test_multi_formation_client_sends_ipc_stored_images_of_downsampled_real_starts():
    from fedcond.distill.formation import decode_formation

    job = job_from_mapping({**JOB, "distill.factor": 2})
    assert job.federated.distill.factor == 2
    data = client_partition(job, partition_id=1, num_partitions=4)
    counts = data.class_counts()
    outcome = condense_partition(data, distill=job.federated.distill)
    synthetic = outcome.synthetic
    assert synthetic.factor == 2 and synthetic.meta["factor"] == 2
    assert set(synthetic.class_counts()[counts > 0].tolist()) == {3}  # stored: ipc per class present
    tiles = decode_formation(synthetic.images, factor=2)
    assert tiles.shape == (4 * len(synthetic), 1, 8, 8) and torch.isfinite(tiles).all()


def test_warm_start_is_used_only_when_it_fits_and_meta_says_which(caplog):
    job = job_from_mapping(JOB)
    data = client_partition(job, partition_id=1, num_partitions=4)
    distill = DistillConfig(ipc=3, iterations=0, seed=4)
    first = condense_partition(data, distill=distill).synthetic
    assert first.meta["warm_start"] is False
    again = condense_partition(data, distill=distill, warm_start=first).synthetic
    assert again.meta["warm_start"] is True and torch.equal(again.images, first.images)  # 0 iterations: unchanged
    wrong = SyntheticSet(first.images[:-1], first.labels[:-1], first.meta)  # one image short
    with caplog.at_level(logging.WARNING):
        fresh = condense_partition(data, distill=distill, warm_start=wrong).synthetic
    assert fresh.meta["warm_start"] is False and "not reused" in caplog.text


def test_a_dp_run_warm_starts_only_from_an_earlier_dp_set(caplog):
    from fedcond.privacy import PrivateCondensation

    job = job_from_mapping(JOB)
    data = client_partition(job, partition_id=1, num_partitions=4)
    distill = DistillConfig(ipc=3, iterations=1, seed=4, init="noise", batch_real=16, dsa=False,
                            mixed_precision=False)

    def private() -> PrivateCondensation:
        return PrivateCondensation({"epsilon": 5.0, "delta": 1e-5}, distill=distill, class_counts=data.class_counts())

    plain = condense_partition(data, distill=distill).synthetic  # fits, but was made without DP
    with caplog.at_level(logging.WARNING):
        first = condense_partition(data, distill=distill, private=private(), warm_start=plain).synthetic
    assert first.meta["warm_start"] is False and "not condensed with DP" in caplog.text
    again = condense_partition(data, distill=distill, private=private(), warm_start=first).synthetic
    assert again.meta["warm_start"] is True and "epsilon" in again.meta
    with pytest.raises(ValueError, match="a DP run starts from noise"):
        condense_partition(data, distill=distill, private=private(), start=plain.images)


def test_real_init_repeats_a_class_smaller_than_ipc():
    job = job_from_mapping(JOB)
    data = client_partition(job, partition_id=0, num_partitions=4)
    small = data.subset(torch.nonzero(data.labels == int(data.labels[0])).flatten()[:2])
    start = initial_images(small, classes=[int(small.labels[0])], ipc=5, init="real", generator=torch.Generator())
    assert start.shape == (5, 1, 8, 8)
    assert torch.isfinite(start).all()
    assert not torch.equal(start[2], start[0]) and not torch.equal(start[2], start[1]), "repeats are jittered"


@pytest.mark.parametrize("init", ["herding", "kmeans"])
def test_herding_and_kmeans_init_match_dm_and_repeat_a_small_class(init):
    job = job_from_mapping(JOB)
    data = client_partition(job, partition_id=0, num_partitions=4)
    big = int(torch.argmax(data.class_counts()))
    own = data.subset(torch.nonzero(data.labels == big).flatten())
    start = initial_images(own, classes=[big], ipc=3, init=init, generator=torch.Generator().manual_seed(0))
    coreset = initial_synthetic(own, ipc=3, init=init, classes=[big], generator=torch.Generator().manual_seed(0))
    assert torch.equal(start, coreset[0])
    random_real = initial_images(own, classes=[big], ipc=3, init="real", generator=torch.Generator().manual_seed(0))
    assert not torch.equal(start, random_real)
    # fewer images than ipc: the repeat-with-jitter path, as for real init
    small = own.subset([0, 1])
    repeated = initial_images(small, classes=[big], ipc=3, init=init, generator=torch.Generator().manual_seed(0))
    assert repeated.shape == (3, 1, 8, 8) and not torch.equal(repeated[2], repeated[0])


def test_bad_partition_id_names_the_problem():
    with pytest.raises(ValueError, match="partition id 7 is outside"):
        client_partition(job_from_mapping(JOB), partition_id=7, num_partitions=4)


def _context(partition_id: int) -> Context:
    return Context(run_id=1, node_id=100 + partition_id, node_config={"partition-id": partition_id,
                   "num-partitions": 4}, state=RecordDict(), run_config={})


def _train_message(
    node_id: int, server_round: int, extra: dict | None = None, job: dict | None = None
) -> Message:
    config = ConfigRecord({**job_to_mapping(job_from_mapping(job or JOB)), "server-round": server_round})
    return Message(content=RecordDict({CONFIG_KEY: config, **(extra or {})}), dst_node_id=node_id,
                   message_type=f"train.{CONDENSE_ACTION}")


def test_condense_handler_replies_a_valid_set_and_keeps_memory_in_context_state(task_identity):
    context = _context(2)
    reply = app(_train_message(102, 1), context)
    assert not reply.has_error()
    accepted = validate_reply(reply, num_classes=10, image_shape=(1, 8, 8), max_images=30)
    metrics = reply.content.metric_records[METRICS_KEY]
    assert metrics[NUM_EXAMPLES] == sum(metrics[CLASS_COUNTS])
    memory = synthetic_from_record(context.state.array_records[MEMORY_KEY])
    assert torch.equal(memory.images, accepted.synthetic.images)
    # round 2, multi-round: the memory is the start point
    second = app(_train_message(102, 2), context)
    again = synthetic_from_record(second.content.array_records[SYNTHETIC_KEY])
    assert torch.equal(again.labels, memory.labels)
    assert (again.images - memory.images).abs().mean() < (again.images.std() * 0.5), "warm start from memory"


@pytest.mark.parametrize(
    ("key", "value"),
    [("server-round", "abc"), ("server-round", 0), ("distill.ipc", "ten"), ("rounds", -1), ("out", [1, 2])],
)
def test_a_malformed_request_config_is_a_refusal_naming_the_key(task_identity, key, value):
    message = _train_message(102, 1)
    message.content.config_records[CONFIG_KEY][key] = value
    reply = app(message, _context(2))
    assert reply.has_error() and reply.error.code == POLICY_REFUSED
    assert "malformed" in reply.error.reason and key.split(".")[-1] in reply.error.reason


def test_a_model_that_is_missing_or_not_the_jobs_architecture_is_a_refusal(task_identity):
    from flwr.app import Array, ArrayRecord

    serving_updates = build_client_app(policy_from_mapping({"serve": ["condense", "train", "evaluate"]}))
    job = {**JOB, "strategy": "fedavg"}
    config = ConfigRecord({**job_to_mapping(job_from_mapping(job)), "server-round": 1})
    no_model = Message(content=RecordDict({CONFIG_KEY: config}), dst_node_id=101, message_type="train")
    reply = serving_updates(no_model, _context(1))
    assert reply.has_error() and reply.error.code == POLICY_REFUSED and "carries no model" in reply.error.reason
    wrong = ArrayRecord({"w": Array(torch.zeros(3).numpy())})
    reply = serving_updates(Message(content=RecordDict({CONFIG_KEY: config, MODEL_KEY: wrong}), dst_node_id=101,
                                    message_type="train"), _context(1))
    assert reply.has_error() and reply.error.code == POLICY_REFUSED and "does not fit" in reply.error.reason


def test_a_server_model_as_embedder_is_refused_without_dp_unless_the_policy_accepts_it(task_identity):
    model = {MODEL_KEY: model_to_record(get_model("convnet", get_spec("digits")))}
    refused = app(_train_message(102, 2, model), _context(2))
    assert refused.has_error() and "'accept_server_embedder'" in refused.error.reason
    accepting = build_client_app(policy_from_mapping({"accept_server_embedder": True}))
    reply = accepting(_train_message(102, 2, model), _context(2))
    assert not reply.has_error() and SYNTHETIC_KEY in reply.content.array_records


def test_fedavg_train_handler_returns_weights_and_num_examples(task_identity):
    spec = get_spec("digits")
    model = get_model("convnet", spec, generator=torch.Generator().manual_seed(0))
    config = ConfigRecord({**job_to_mapping(job_from_mapping({**JOB, "strategy": "fedavg"})), "server-round": 1,
                           "proximal-mu": 0.1})
    message = Message(content=RecordDict({CONFIG_KEY: config, MODEL_KEY: model_to_record(model)}), dst_node_id=101,
                      message_type="train")
    refused = app(message, _context(1))  # the default policy serves no model updates
    assert refused.has_error() and "'serve'" in refused.error.reason
    serving_updates = build_client_app(policy_from_mapping({"serve": ["condense", "train", "evaluate"]}))
    reply = serving_updates(message, _context(1))
    arrays = reply.content.array_records[MODEL_KEY]
    assert set(arrays.keys()) == set(model.state_dict().keys())
    assert reply.content.metric_records[METRICS_KEY][NUM_EXAMPLES] > 0
    changed = any(not torch.equal(a, b) for a, b in zip(arrays.to_torch_state_dict().values(),
                                                         model.state_dict().values(), strict=True))
    assert changed


def test_a_crashing_client_raises_so_flower_reports_an_error(task_identity, caplog):
    message = _train_message(109, 1)
    context = Context(run_id=1, node_id=109, node_config={"partition-id": 9, "num-partitions": 4},
                      state=RecordDict(), run_config={})
    with caplog.at_level(logging.ERROR), pytest.raises(ValueError, match="partition id 9"):
        app(message, context)


def test_a_node_without_a_partition_id_is_refused_not_guessed(task_identity):
    message = _train_message(5_000_000_007, 1)
    context = Context(run_id=1, node_id=5_000_000_007, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match="no 'partition-id' in its node config"):
        app(message, context)


def test_distill_config_survives_the_config_record():
    job = job_from_mapping({**JOB, "distill.init": "noise", "dp.epsilon": 4.0})
    back = job_from_mapping(dict(ConfigRecord(job_to_mapping(job))))
    assert back == job
    assert isinstance(back.federated.distill, DistillConfig)


def test_dp_epsilon_accumulates_across_rounds_in_context_state(task_identity):
    job = {**JOB, "rounds": 2, "dp.epsilon": 4.0, "dp.delta": 1e-5}
    context = _context(3)
    model = {MODEL_KEY: model_to_record(get_model("convnet", get_spec("digits")))}
    spent = []
    for server_round in (1, 2):
        reply = app(_train_message(103, server_round, model if server_round > 1 else None, job), context)
        assert not reply.has_error()
        spent.append(reply.content.metric_records[METRICS_KEY][EPSILON])
        ledger = context.state.config_records[DP_LEDGER_KEY]
        assert sum(ledger["steps"]) == 2 * server_round  # 2 DM iterations per round, all accounted
    assert 0 < spent[0] < spent[1] <= 4.0 + 1e-9  # cumulative over the rounds, within the budget
    # a third round was not planned: the client refuses to spend past its budget, in a reply
    refused = app(_train_message(103, 3, model, job), context)
    assert refused.has_error() and refused.error.code == POLICY_REFUSED and "over the budget" in refused.error.reason
    assert sum(context.state.config_records[DP_LEDGER_KEY]["steps"]) == 4  # nothing more was spent


def test_a_configured_dp_noise_seed_gives_every_client_and_round_its_own_noise(task_identity, monkeypatch):
    """Clients sharing one dp.noise_seed must not share noise (their difference would be noise-free)."""
    import fedcond.federated.client_app as client_app
    from fedcond.privacy.dp import derive_noise_seed

    seen: list[tuple[int | None, str]] = []
    real_condense = client_app.condense_partition

    def spy(data, *, private, **kwargs):
        outcome = real_condense(data, private=private, **kwargs)
        seen.append((private.statistics.noise_seed, outcome.synthetic.meta["dp_noise"]))
        return outcome

    monkeypatch.setattr(client_app, "condense_partition", spy)
    job = {**JOB, "dp.epsilon": 4.0, "dp.noise_seed": 5}
    # the default policy refuses a server-supplied seed; a research policy that honours it
    refused = app(_train_message(100, 1, None, job), _context(0))
    assert refused.has_error() and "'dp.honour_server_noise_seed'" in refused.error.reason

    research = client_app.build_client_app(policy_from_mapping({"dp.honour_server_noise_seed": True}))
    for partition_id in (0, 1):
        assert not research(_train_message(100 + partition_id, 1, None, job), _context(partition_id)).has_error()
    assert seen == [(derive_noise_seed(5, 0, 1), "seeded"), (derive_noise_seed(5, 1, 1), "seeded")]
    assert seen[0][0] != seen[1][0]
    # without a configured seed every client draws secret noise
    assert not app(_train_message(100, 1, None, {**JOB, "dp.epsilon": 4.0}), _context(0)).has_error()
    assert seen[2] == (None, "secret")


def test_fedavg_local_sgd_keeps_its_learning_rate_for_every_local_epoch(monkeypatch):
    # the DD evaluation recipe drops the lr x0.1 at half of the epochs; a FedAvg/FedProx round's
    # local epochs are not one schedule, so local SGD must run at local-lr throughout
    from fedcond.data.registry import load_dataset
    from fedcond.federated.client import local_train

    seen: list[float] = []
    original = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    data = load_dataset("digits").train.subset(list(range(40)))
    model = get_model("mlp", data.spec, generator=torch.Generator().manual_seed(0))
    local_train(model, data, epochs=4, lr=0.05, batch_size=64, generator=torch.Generator().manual_seed(0))
    assert seen == [0.05] * 4


def test_the_server_test_subsample_is_the_same_for_every_seed():
    from fedcond.federated.client import federated_test_set

    tests = [
        federated_test_set(job_from_mapping({"dataset": "digits", "test_per_class": 5, "seed": seed}))
        for seed in (0, 1)
    ]
    assert len(tests[0]) == 50
    assert torch.equal(tests[0].images, tests[1].images)


def test_fedprox_proximal_term_holds_the_local_model_near_the_global_one() -> None:
    """FedProx's mu/2 ||w - w_global||^2 must pull the local update back: same data, same seed,
    only mu differs, and the squared drift from the starting (global) weights shrinks."""
    data = load_dataset("digits").train

    def drift(mu: float) -> float:
        model = get_model("mlp", data.spec, generator=torch.Generator().manual_seed(0))
        start = [p.detach().clone() for p in model.parameters()]
        local_train(model, data, epochs=3, lr=0.05, batch_size=32, proximal_mu=mu,
                    generator=torch.Generator().manual_seed(0))
        return sum(float(((p.detach() - s) ** 2).sum()) for p, s in zip(model.parameters(), start, strict=True))

    assert drift(1.0) < 0.5 * drift(0.0)
