"""FedCond over rounds: seeded sampling, the reply fraction, the kept sets, epsilons and the round history."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

from fedcond.config import FederatedConfig, parse_config
from fedcond.federated.records import CONFIG_KEY, EPSILON, METRICS_KEY, MODEL_KEY, SERVER_ROUND
from fedcond.federated.strategy import FedCond

from .conftest import error_reply, synthetic_reply


class FakeGrid:
    def __init__(self, node_ids) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def _strategy(spec, **overrides) -> FedCond:
    config = parse_config(
        FederatedConfig, {"server_epochs": 2, "distill.ipc": 2, "min_reply_fraction": 0.5, **overrides}
    )
    return FedCond(spec=spec, config=config, device="cpu")


def _configure(strategy: FedCond, nodes, server_round: int = 1, arrays: ArrayRecord | None = None,
               config: dict | None = None) -> list[Message]:
    record = ConfigRecord(config or {"x": 1})
    return list(strategy.configure_train(server_round, arrays or ArrayRecord(), record, FakeGrid(nodes)))


def _sampled(spec, seed: int, server_round: int) -> list[int]:
    strategy = _strategy(spec, seed=seed, fraction_train=0.5)
    return [m.metadata.dst_node_id for m in _configure(strategy, range(100, 110), server_round)]


def _with_metric(reply: Message, key: str, value: float) -> Message:
    reply.content.metric_records[METRICS_KEY][key] = value
    return reply


def test_sampling_is_seeded_by_seed_and_round(task_identity, digits_spec) -> None:
    first = _sampled(digits_spec, seed=0, server_round=1)
    assert len(first) == 5 and len(set(first)) == 5 and set(first) <= set(range(100, 110))
    assert first == sorted(first)
    strategy = _strategy(digits_spec, fraction_train=0.3)
    _configure(strategy, range(100, 110))
    assert strategy.rounds[-1].sampled == 3  # the reply fraction is taken of the sampled nodes, not all
    assert _sampled(digits_spec, seed=0, server_round=1) == first  # reproducible
    by_round = {tuple(_sampled(digits_spec, seed=0, server_round=r)) for r in range(1, 6)}
    assert len(by_round) > 1, "every round sampled the same clients"
    by_seed = {tuple(_sampled(digits_spec, seed=s, server_round=1)) for s in range(5)}
    assert len(by_seed) > 1, "the job's seed does not change the sample"


def test_train_messages_carry_the_given_config_and_the_round(task_identity, digits_spec) -> None:
    strategy = _strategy(digits_spec)
    messages = _configure(strategy, [4, 2, 9], server_round=3, config={"distill.ipc": 2, "lr": 0.5})
    assert [m.metadata.dst_node_id for m in messages] == [2, 4, 9]
    for message in messages:
        config = message.content.config_records[CONFIG_KEY]
        assert dict(config) == {"distill.ipc": 2, "lr": 0.5, SERVER_ROUND: 3}
    assert strategy.rounds[-1].server_round == 3 and strategy.rounds[-1].sampled == 3


def test_a_later_round_without_a_global_model_sends_no_model(task_identity, digits_spec) -> None:
    strategy = _strategy(digits_spec, rounds=2, server_embedder=True)
    assert all(MODEL_KEY not in m.content.array_records for m in _configure(strategy, [1, 2], server_round=2))
    model = ArrayRecord({"w": Array(np.ones(2, np.float32))})
    sent = _configure(strategy, [1, 2], server_round=2, arrays=model)
    assert all(m.content.array_records[MODEL_KEY] is model for m in sent)


def test_exactly_the_required_fraction_of_valid_replies_trains(task_identity, digits_spec) -> None:
    strategy = _strategy(digits_spec, min_reply_fraction=0.5)
    _configure(strategy, [1, 2, 3, 4])
    replies = [synthetic_reply(1, classes={0: 9}), synthetic_reply(2, classes={1: 9}), error_reply(3), error_reply(4)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and strategy.rounds[-1].trained
    assert metrics["accepted"] == 2 and metrics["dropped"] == 2


def test_replies_that_never_came_count_against_the_fraction(task_identity, digits_spec) -> None:
    # 4 sampled, 1 valid reply and no other reply (timeouts): 1 < 0.5 x 4, the model is kept
    strategy = _strategy(digits_spec, min_reply_fraction=0.5)
    _configure(strategy, [1, 2, 3, 4])
    arrays, metrics = strategy.aggregate_train(1, [synthetic_reply(1, classes={0: 9})])
    assert arrays is None and not strategy.rounds[-1].trained
    assert metrics["accepted"] == 1 and metrics["dropped"] == 0 and metrics["union-images"] == 0
    assert strategy.union is None


def test_a_zero_reply_fraction_with_no_valid_reply_keeps_the_model_without_crashing(task_identity, digits_spec) -> None:
    strategy = _strategy(digits_spec, min_reply_fraction=0.0)
    _configure(strategy, [1, 2])
    arrays, metrics = strategy.aggregate_train(1, [error_reply(1), error_reply(2)])
    assert arrays is None and metrics["accepted"] == 0 and metrics["dropped"] == 2


def test_a_newer_accepted_set_replaces_the_clients_earlier_one(task_identity, digits_spec) -> None:
    strategy = _strategy(digits_spec, rounds=2, min_reply_fraction=0.5)
    _configure(strategy, [1, 2], server_round=1)
    strategy.aggregate_train(1, [synthetic_reply(1, classes={0: 20}), synthetic_reply(2, classes={5: 20})])
    _configure(strategy, [1, 2], server_round=2)
    strategy.aggregate_train(2, [synthetic_reply(1, classes={3: 20}), synthetic_reply(2, classes={5: 20}, seed=9)])
    assert sorted(set(strategy.union.labels.tolist())) == [3, 5], "node 1's round-1 class 0 set was replaced"
    assert len(strategy.union) == 4


def test_client_metrics_average_this_rounds_accepted_replies_only(task_identity, digits_spec) -> None:
    strategy = _strategy(digits_spec, rounds=2, min_reply_fraction=0.0)
    _configure(strategy, [1, 2, 3], server_round=1)
    replies = [_with_metric(synthetic_reply(n, classes={n: 10}), "final-loss", float(n)) for n in (1, 2, 3)]
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["client-mean-final-loss"] == pytest.approx(2.0)
    assert metrics["client-mean-num-examples"] == pytest.approx(10.0)
    _configure(strategy, [1, 2, 3], server_round=2)
    reply = _with_metric(synthetic_reply(1, classes={1: 30}), "final-loss", 0.5)
    _, metrics = strategy.aggregate_train(2, [reply, error_reply(2)])
    assert metrics["client-mean-final-loss"] == pytest.approx(0.5)  # node 1 alone, not over all 3 kept sets
    assert metrics["client-mean-num-examples"] == pytest.approx(30.0)
    assert "client-max-epsilon" not in metrics


def test_a_nodes_epsilon_never_decreases_and_nonsense_values_are_ignored(task_identity, digits_spec) -> None:
    strategy = _strategy(digits_spec, rounds=3, min_reply_fraction=0.0)
    for server_round, epsilon in ((1, 5.0), (2, 3.0)):
        _configure(strategy, [1], server_round=server_round)
        strategy.aggregate_train(server_round, [_with_metric(synthetic_reply(1, classes={0: 9}), EPSILON, epsilon)])
    assert strategy.node_epsilon == {1: 5.0}  # cumulative: a smaller later report does not lower it
    _configure(strategy, [2, 3, 4], server_round=3)
    strategy.aggregate_train(3, [
        _with_metric(synthetic_reply(2, classes={0: 9}), EPSILON, -1.0),
        _with_metric(synthetic_reply(3, classes={0: 9}), EPSILON, math.nan),
        _with_metric(synthetic_reply(4, classes={0: 9}), EPSILON, math.inf),
        error_reply(5),
    ])
    assert strategy.node_epsilon == {1: 5.0}
    assert strategy.federation_epsilon == 5.0
    assert _strategy(digits_spec).federation_epsilon is None  # no DP reply: no epsilon


def test_round_history_records_each_round_once_with_its_numbers(task_identity, digits_spec) -> None:
    strategy = _strategy(digits_spec, rounds=2, min_reply_fraction=0.5)
    _configure(strategy, [1, 2, 3], server_round=1)
    strategy.aggregate_train(1, [synthetic_reply(1, classes={0: 10}), synthetic_reply(2, classes={1: 10}),
                                 error_reply(3, "ValueError: boom")])
    _configure(strategy, [1, 2, 3], server_round=2)
    strategy.aggregate_train(2, [error_reply(1), error_reply(2)])
    assert [r.server_round for r in strategy.rounds] == [1, 2]
    first, second = (r.as_dict() for r in strategy.rounds)
    assert first["round"] == 1 and first["sampled"] == 3 and first["accepted"] == 2
    assert first["dropped"] == {"3": "client error: ValueError: boom"}
    assert first["union_images"] == 4 and first["trained"] is True and first["server_seconds"] > 0
    assert first["client-mean-distill-seconds"] == pytest.approx(1.0)
    assert second["round"] == 2 and second["sampled"] == 3 and second["accepted"] == 0
    assert set(second["dropped"]) == {"1", "2"} and second["trained"] is False and second["union_images"] == 0


def test_aggregating_an_unconfigured_round_starts_its_own_report(task_identity, digits_spec) -> None:
    strategy = _strategy(digits_spec, min_reply_fraction=0.5)
    arrays, _ = strategy.aggregate_train(1, [synthetic_reply(1, classes={0: 10})])
    assert arrays is not None and len(strategy.rounds) == 1 and strategy.rounds[0].sampled == 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"fraction_train": 0.0}, "fraction_train"),
        ({"fraction_train": 1.5}, "fraction_train"),
        ({"min_reply_fraction": -0.1}, "min_reply_fraction"),
        ({"min_reply_fraction": 1.1}, "min_reply_fraction"),
    ],
)
def test_the_strategy_refuses_fractions_outside_their_range(digits_spec, settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FedCond(spec=digits_spec, config=FederatedConfig(**settings))


def test_the_global_model_depends_on_the_seed_and_nothing_else(task_identity, digits_spec) -> None:
    def weights(seed: int) -> list[torch.Tensor]:
        strategy = _strategy(digits_spec, seed=seed)
        _configure(strategy, [1, 2])
        replies = [synthetic_reply(1, classes={0: 10}), synthetic_reply(2, classes={1: 10})]
        arrays, _ = strategy.aggregate_train(1, replies)
        return list(arrays.to_torch_state_dict().values())

    same, again, other = weights(0), weights(0), weights(1)
    assert all(torch.equal(a, b) for a, b in zip(same, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(same, other, strict=True))
