"""FedAvg / FedProx server side: the strategy built from the config, and weight averaging by num-examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedProx

from fedcond.config import FederatedConfig
from fedcond.data import get_spec
from fedcond.federated.baselines import baseline_strategy
from fedcond.federated.client import client_partition
from fedcond.federated.client_app import build_client_app
from fedcond.federated.job import job_from_mapping, job_to_mapping
from fedcond.federated.policy import policy_from_mapping
from fedcond.federated.records import CONFIG_KEY, METRICS_KEY, MODEL_KEY, NUM_EXAMPLES, PROXIMAL_MU
from fedcond.models import get_model

from .conftest import request_to


class FakeGrid:
    def __init__(self, node_ids) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def _weights_reply(node_id: int, value: float, num_examples: int) -> Message:
    arrays = ArrayRecord({"w": Array(np.full(3, value, np.float32)), "b": Array(np.full(2, -value, np.float32))})
    content = RecordDict({MODEL_KEY: arrays, METRICS_KEY: MetricRecord({NUM_EXAMPLES: num_examples})})
    return Message(content, reply_to=request_to(node_id))


@pytest.mark.parametrize(("name", "cls"), [("fedavg", FedAvg), ("fedprox", FedProx)])
def test_baseline_strategy_is_flowers_own_with_the_configs_sampling(name: str, cls: type) -> None:
    screened = baseline_strategy(FederatedConfig(strategy=name, fraction_train=0.3, min_available_nodes=4,
                                                 proximal_mu=0.25))
    strategy = screened.inner  # behind the reply screen (tests/federated/test_screening.py)
    assert type(strategy) is cls
    assert strategy.fraction_train == 0.3 and strategy.min_available_nodes == 4
    assert strategy.fraction_evaluate == 0.0 and strategy.min_train_nodes == 1
    if cls is FedProx:
        assert strategy.proximal_mu == 0.25


def test_a_non_baseline_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="no baseline strategy named 'fedcond'"):
        baseline_strategy(FederatedConfig(strategy="fedcond"))


def test_fedprox_sends_its_mu_and_samples_as_many_nodes_as_fedcond(task_identity) -> None:
    strategy = baseline_strategy(FederatedConfig(strategy="fedprox", fraction_train=0.35, proximal_mu=0.5))
    messages = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord({"lr": 0.1}), FakeGrid(range(1, 11))))
    assert len(messages) == 3  # int(10 x 0.35), as FedCond samples
    assert all(m.content.config_records[CONFIG_KEY][PROXIMAL_MU] == 0.5 for m in messages)


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_the_server_averages_client_weights_by_their_num_examples(task_identity, name: str) -> None:
    strategy = baseline_strategy(FederatedConfig(strategy=name))
    replies = [_weights_reply(1, 1.0, 10), _weights_reply(2, 4.0, 30), _weights_reply(3, -2.0, 60)]
    arrays, _ = strategy.aggregate_train(1, replies)
    expected = (1.0 * 10 + 4.0 * 30 - 2.0 * 60) / 100  # 0.1, where the plain mean would be 1.0
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(3, expected, np.float32), rtol=1e-6)
    np.testing.assert_allclose(arrays["b"].numpy(), np.full(2, -expected, np.float32), rtol=1e-6)


def test_the_fedavg_client_reports_its_partition_size_as_num_examples(task_identity) -> None:
    job_values = {"num_clients": 4, "alpha": 0.1, "strategy": "fedavg", "device": "cpu",
                  "distill.mixed_precision": False}
    job = job_from_mapping(job_values)
    spec = get_spec("digits")
    model = get_model("convnet", spec, generator=torch.Generator().manual_seed(0))
    config = ConfigRecord({**job_to_mapping(job), "server-round": 1})
    message = Message(content=RecordDict({CONFIG_KEY: config, MODEL_KEY: ArrayRecord(model.state_dict())}),
                      dst_node_id=102, message_type="train")
    context = Context(run_id=1, node_id=102, node_config={"partition-id": 2, "num-partitions": 4},
                      state=RecordDict(), run_config={})
    serving_updates = build_client_app(policy_from_mapping({"serve": ["condense", "train", "evaluate"]}))
    reply = serving_updates(message, context)
    expected = len(client_partition(job, partition_id=2, num_partitions=4))
    assert reply.content.metric_records[METRICS_KEY][NUM_EXAMPLES] == expected
    # the ClientApp's reply has the structure the reply screen expects: it is aggregated, not dropped
    strategy = baseline_strategy(FederatedConfig(strategy="fedavg"))
    strategy.configure_train(1, ArrayRecord(model.state_dict()), ConfigRecord(), FakeGrid([102]))
    arrays, _ = strategy.aggregate_train(1, [reply])
    assert strategy.dropped[1] == {} and arrays is not None


def test_the_weight_averaging_names_are_the_baselines_and_each_strategy_key_names_real_strategies() -> None:
    from fedcond.config import STRATEGY_KEYS, WEIGHT_AVERAGING
    from fedcond.federated.baselines import BASELINES
    from fedcond.federated.job import STRATEGIES

    assert set(WEIGHT_AVERAGING) == set(BASELINES) and set(STRATEGIES) == {"fedcond", *BASELINES}
    assert all(set(readers) <= set(STRATEGIES) for readers in STRATEGY_KEYS.values())
