"""simulations/bench_adaptive.py: attack and rule names, and the coalition the server sees."""

from __future__ import annotations

import argparse

import pytest
import torch

from fedcond.data import load_dataset
from fedcond.distill.synthetic import SyntheticSet
from fedcond.federated.validation import ClientSet
from tests.simulations.scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_adaptive")


def test_attack_and_rule_names_parse_or_are_refused_by_name(bench):
    attack = bench.Attack.parse("cycle:3:replace:1,2,3")
    assert (attack.kind, attack.colluders, attack.replace, attack.cycle) == ("cycle", 3, True, (1, 2, 3))
    assert bench.Attack.parse("cycle:2:added:0,5").replace is False
    assert bench.Attack.parse("harness:label-flip:3").harness_kind == "label-flip"
    assert bench.Attack.parse("none").colluders == 0
    for bad in ("cycle:3:replace:1", "cycle:3:replace:1,1", "cycle:x:replace:1,2", "cycle:3:swap:1,2", "flip"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected none"):
            bench.Attack.parse(bad)
    assert bench.rule_overrides("cap") == {"outlier_nets": 0}
    assert bench.rule_overrides("server30") == {"outlier_nets": 2, "reference_per_class": 30}
    for bad in ("server", "server0", "median"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected cap"):
            bench.rule_overrides(bad)


@pytest.mark.parametrize("replace", [True, False])
def test_the_coalition_flips_labels_along_the_cycle_and_keeps_the_other_classes(bench, replace):
    digits = load_dataset("digits")
    train = digits.train
    honest = [ClientSet(node_id=1000 + i, synthetic=SyntheticSet(train.images[:4], train.labels[:4], {}),
                        class_counts=torch.bincount(train.labels[:4], minlength=10) * 10, metrics={})
              for i in range(5)]
    attack = bench.Attack.parse(f"cycle:2:{'replace' if replace else 'added'}:1,2,3")
    sets, hostile = bench.coalition(honest, attack, train=train, ipc=3, seed=0)
    assert hostile == ({1000, 1001} if replace else {1005, 1006})
    assert len(sets) == (5 if replace else 7) and {s.node_id for s in sets} >= hostile
    colluder = next(s for s in sets if s.node_id in hostile)
    labels = colluder.synthetic.labels
    assert torch.bincount(labels, minlength=10).tolist() == [3] * 10 and colluder.class_counts.tolist() == [20] * 10
    # each image labelled c is one of the training images of the class after c on the cycle
    shown = {1: 2, 2: 3, 3: 1}
    for image, label in zip(colluder.synthetic.images, labels.tolist(), strict=True):
        match = (train.images == image).flatten(1).all(1).nonzero().flatten()
        assert int(train.labels[match[0]]) == shown.get(label, label)
