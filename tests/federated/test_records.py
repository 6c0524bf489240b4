"""Record <-> object conversions: synthetic sets, the DP ledger, models, and the payload byte count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedcond.data import get_spec
from fedcond.distill.synthetic import SyntheticSet
from fedcond.federated.records import (
    IMAGES,
    LABELS,
    ledger_from_record,
    ledger_to_record,
    model_from_record,
    model_to_record,
    payload_bytes,
    synthetic_from_record,
    synthetic_to_record,
)
from fedcond.models import get_model
from fedcond.privacy.accounting import PrivacyAccountant


def _set(n: int = 6) -> SyntheticSet:
    g = torch.Generator().manual_seed(0)
    return SyntheticSet(torch.randn((n, 1, 8, 8), generator=g), torch.arange(n) % 3, {"num_classes": 3})


def test_synthetic_set_round_trip_is_exact() -> None:
    original = _set()
    record = synthetic_to_record(original)
    assert list(record.keys()) == [IMAGES, LABELS]
    assert record[IMAGES].dtype == "float32" and record[LABELS].dtype == "int64"
    assert tuple(record[IMAGES].shape) == (6, 1, 8, 8) and tuple(record[LABELS].shape) == (6,)
    back = synthetic_from_record(record, meta={"num_classes": 3, "factor": 1})
    assert torch.equal(back.images, original.images) and torch.equal(back.labels, original.labels)
    assert back.images.dtype == torch.float32 and back.labels.dtype == torch.int64
    assert back.meta == {"num_classes": 3, "factor": 1}
    back.images.add_(1.0)  # the rebuilt set owns its memory: the record is not changed through it
    assert torch.equal(synthetic_from_record(record).images, original.images)


def test_synthetic_from_record_checks_keys_and_declared_dtypes() -> None:
    images = np.zeros((2, 1, 8, 8), np.float32)
    labels = np.zeros(2, np.int64)
    with pytest.raises(ValueError, match=r"lacks array\(s\) \['labels'\]"):
        synthetic_from_record(ArrayRecord({IMAGES: Array(images)}))
    with pytest.raises(ValueError, match=r"lacks array\(s\) \['images', 'labels'\]"):
        synthetic_from_record(ArrayRecord({"other": Array(images)}))
    with pytest.raises(ValueError, match="images must be float32, got float64"):
        synthetic_from_record(ArrayRecord({IMAGES: Array(images.astype(np.float64)), LABELS: Array(labels)}))
    with pytest.raises(ValueError, match="labels must be int64, got int32"):
        synthetic_from_record(ArrayRecord({IMAGES: Array(images), LABELS: Array(labels.astype(np.int32))}))


def test_dp_ledger_round_trip_keeps_every_run_and_the_epsilon() -> None:
    accountant = PrivacyAccountant("rdp")
    accountant.step(noise_multiplier=1.5, sample_rate=0.1, steps=30)
    accountant.step(noise_multiplier=2.0, sample_rate=0.05, steps=7)
    state = accountant.state_dict()
    record = ledger_to_record(state)
    assert record["noise-multipliers"] == [1.5, 2.0]
    assert record["sample-rates"] == [0.1, 0.05]
    assert record["steps"] == [30, 7]
    back = ledger_from_record(record)
    assert back == {"mechanism": "rdp", "history": [[1.5, 0.1, 30], [2.0, 0.05, 7]]}
    restored = PrivacyAccountant("rdp")
    restored.load_state_dict(back)
    assert restored.epsilon(delta=1e-5) == accountant.epsilon(delta=1e-5)


def test_dp_ledger_keeps_the_mechanism_and_refuses_ragged_columns() -> None:
    assert ledger_from_record(ledger_to_record({"mechanism": "prv", "history": []})) == {
        "mechanism": "prv", "history": []
    }
    ragged = ConfigRecord({"mechanism": "rdp", "noise-multipliers": [1.0, 2.0], "sample-rates": [0.1], "steps": [3]})
    with pytest.raises(ValueError, match="inconsistent"):
        ledger_from_record(ragged)


def test_model_round_trip_is_exact_and_strict() -> None:
    spec = get_spec("digits")
    source = get_model("mlp", spec, generator=torch.Generator().manual_seed(1))
    target = get_model("mlp", spec, generator=torch.Generator().manual_seed(2))
    model_from_record(target, model_to_record(source))
    for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    state = source.state_dict()
    partial = ArrayRecord({k: v for k, v in list(state.items())[:-1]})  # one tensor missing
    with pytest.raises(RuntimeError, match="Missing key"):
        model_from_record(get_model("mlp", spec), partial)


def test_payload_bytes_counts_arrays_configs_and_metrics() -> None:
    arrays = ArrayRecord({"w": Array(np.zeros((5, 5), np.float32))})
    config = ConfigRecord({"lr": 0.1, "name": "x" * 50})
    metrics = MetricRecord({"num-examples": 7, "class-counts": [1, 2, 3]})
    content = RecordDict({"arrays": arrays, "config": config, "metrics": metrics})
    expected = arrays.count_bytes() + config.count_bytes() + metrics.count_bytes()
    assert payload_bytes(content) == expected
    assert config.count_bytes() > 50 and metrics.count_bytes() > 0
    assert payload_bytes(RecordDict()) == 0
