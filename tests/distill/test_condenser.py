"""The condenser registry: every method by name through one interface, on the bundled digits."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from fedcond.config import DistillConfig
from fedcond.data.registry import ArrayDataset
from fedcond.distill import (
    CondensationResult,
    Condenser,
    DistributionMatching,
    ShortClassError,
    SyntheticSet,
    UnsupportedOptionError,
    get_condenser,
    list_condensers,
    register_condenser,
    select_coreset,
)
from fedcond.distill import condenser as registry

TINY = {"batch_real": 16, "dsa": False, "mixed_precision": False}


@pytest.fixture
def private_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test vanish with it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_the_built_in_methods_are_registered() -> None:
    assert {"dm", "random", "herding", "kmeans"} <= set(list_condensers())
    assert list_condensers() == sorted(list_condensers())


def test_an_unknown_name_lists_the_registered_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown condensation method 'kcenter'; registered: .*dm.*herding.*random"):
        get_condenser("kcenter", DistillConfig())


def test_an_option_the_method_cannot_honour_is_refused_by_name(digits) -> None:
    with pytest.raises(UnsupportedOptionError, match="'herding' cannot honour real_statistics"):
        get_condenser("herding", DistillConfig(ipc=1), real_statistics=object())
    with pytest.raises(UnsupportedOptionError, match="'random' cannot honour start"):
        get_condenser("random", DistillConfig(ipc=1)).condense(digits.train, start=torch.zeros(10, 1, 8, 8))


@pytest.mark.parametrize("name", ["dm", "random", "herding", "kmeans"])
def test_each_method_condenses_digits_through_the_one_interface(name: str, digits) -> None:
    condenser = get_condenser(name, DistillConfig(ipc=2, iterations=2, seed=3, **TINY))
    result = condenser.condense(digits.train)
    assert isinstance(condenser, Condenser) and isinstance(result, CondensationResult)
    synthetic = result.synthetic
    assert synthetic.class_counts().tolist() == [2] * 10
    assert synthetic.images.shape == (20, 1, 8, 8) and synthetic.images.dtype == torch.float32
    assert synthetic.meta["method"] == name and synthetic.meta["ipc"] == 2 and synthetic.meta["seed"] == 3
    assert result.skipped_classes == []


@pytest.mark.parametrize("method", ["random", "herding"])
def test_coreset_condensers_give_exactly_select_coreset(method: str, digits) -> None:
    through_registry = get_condenser(method, DistillConfig(ipc=3, seed=7)).condense(digits.train).synthetic
    direct = select_coreset(digits.train, ipc=3, method=method, seed=7)
    assert torch.equal(through_registry.images, direct.images)
    assert torch.equal(through_registry.labels, direct.labels)
    assert through_registry.meta == direct.meta


def test_kmeans_condenser_gives_exactly_dms_kmeans_start(digits) -> None:
    through_registry = get_condenser("kmeans", DistillConfig(ipc=2, seed=5)).condense(digits.train).synthetic
    dm_start = DistributionMatching(DistillConfig(ipc=2, iterations=0, init="kmeans", seed=5)).condense(digits.train)
    assert torch.equal(through_registry.images, dm_start.synthetic.images)
    assert torch.equal(through_registry.labels, dm_start.synthetic.labels)


def test_dm_through_the_registry_is_dm(digits) -> None:
    config = DistillConfig(ipc=1, iterations=3, seed=2, **TINY)
    condenser = get_condenser("dm", config)
    assert isinstance(condenser, DistributionMatching)
    a = condenser.condense(digits.train).synthetic
    b = DistributionMatching(config).condense(digits.train).synthetic
    assert torch.equal(a.images, b.images)


def test_small_class_policy(digits) -> None:
    data = digits.train
    keep = torch.cat([torch.nonzero(data.labels != 5).flatten(), torch.nonzero(data.labels == 5).flatten()[:2]])
    keep = keep[data.labels[keep] != 3]  # class 3 absent, class 5 holds 2 images
    subset = data.subset(keep)
    for name in ("random", "herding", "kmeans"):
        with pytest.raises(ShortClassError, match=r"needs 4 images per class; classes 5 \(2\)"):
            get_condenser(name, DistillConfig(ipc=4)).condense(subset)
    result = get_condenser("random", DistillConfig(ipc=2)).condense(subset)
    assert result.skipped_classes == [3]
    assert result.synthetic.class_counts().tolist()[3] == 0


def test_a_third_party_condenser_registers_and_runs(private_registry: None, digits) -> None:
    @register_condenser("mean-image")
    class MeanImage:
        config_fields = frozenset({"ipc", "seed"})

        def __init__(self, config: DistillConfig, *, device: torch.device | str = "cpu") -> None:
            self.config = config

        def condense(
            self,
            data: ArrayDataset,
            *,
            start: torch.Tensor | None = None,
            on_iteration: Callable[[int, float], None] | None = None,
        ) -> CondensationResult:
            classes = [c for c in range(data.spec.num_classes) if bool((data.labels == c).any())]
            images = torch.cat([data.images[data.labels == c].mean(0, keepdim=True) for c in classes])
            labels = torch.tensor(classes)
            meta = {"dataset": data.spec.name, "ipc": self.config.ipc, "method": "mean-image"}
            ipc = self.config.ipc
            synthetic = SyntheticSet(images.repeat_interleave(ipc, 0), labels.repeat_interleave(ipc), meta)
            return CondensationResult(synthetic)

    assert "mean-image" in list_condensers()
    result = get_condenser("mean-image", DistillConfig(ipc=2)).condense(digits.train)
    assert torch.allclose(result.synthetic.images[0], digits.train.images[digits.train.labels == 0].mean(0))
    with pytest.raises(ValueError, match="already registered"):
        register_condenser("mean-image")(MeanImage)


def test_register_refuses_a_class_without_condense(private_registry: None) -> None:
    with pytest.raises(TypeError, match="no condense"):
        register_condenser("nothing")(type("Nothing", (), {}))
    with pytest.raises(ValueError, match="lower-case"):
        register_condenser("DM2")


def test_a_time_budget_stops_dm_after_the_step_that_spends_it(digits) -> None:
    steps: list[int] = []
    config = DistillConfig(ipc=1, iterations=50, time_budget=1e-9, **TINY)
    result = get_condenser("dm", config).condense(digits.train, on_iteration=lambda i, _: steps.append(i))
    assert steps == [0]
    assert result.stopped_by_time_budget and result.iterations_run == 1
    assert result.synthetic.meta["iterations"] == 1


def test_a_budget_not_spent_runs_every_iteration(digits) -> None:
    result = get_condenser("dm", DistillConfig(ipc=1, iterations=3, time_budget=3600.0, **TINY)).condense(digits.train)
    assert not result.stopped_by_time_budget and result.iterations_run == 3
    assert result.synthetic.meta["iterations"] == 3


@pytest.mark.parametrize("budget", [0.0, -1.0, float("inf"), float("nan")])
def test_a_bad_time_budget_is_refused(budget: float) -> None:
    with pytest.raises(ValueError, match="time_budget"):
        DistributionMatching(DistillConfig(time_budget=budget))


def test_a_dp_run_stopped_by_its_budget_is_charged_for_the_iterations_it_ran(digits) -> None:
    from fedcond.privacy.accounting import epsilon_for
    from fedcond.privacy.private_condensation import PrivateCondensation

    config = DistillConfig(ipc=1, iterations=20, init="noise", time_budget=1e-9, **TINY)
    private = PrivateCondensation({"epsilon": 2.0}, distill=config, class_counts=digits.train.class_counts())
    result = private.condense(DistributionMatching(config, real_statistics=private.statistics), digits.train)
    epsilon, delta = result.synthetic.meta["epsilon"], result.synthetic.meta["delta"]
    plan = private.plan
    assert private.statistics.steps == 1 and result.iterations_run == 1
    one_step = epsilon_for(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=1, delta=delta)
    assert epsilon == pytest.approx(one_step)
    assert epsilon < 2.0


def test_an_entry_point_plugin_is_imported_on_the_first_lookup(private_registry: None, monkeypatch, tmp_path) -> None:
    import importlib.metadata
    import sys

    (tmp_path / "my_condenser_plugin.py").write_text(
        "from fedcond.distill import register_condenser\n"
        "from fedcond.distill.selection import RandomCondenser\n"
        "register_condenser('plugin-random')(type('PluginRandom', (RandomCondenser,), {'name': 'plugin-random'}))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_condenser_plugin", raising=False)
    points = [
        importlib.metadata.EntryPoint("plugin-random", "my_condenser_plugin", registry.ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("broken", "no_such_module_anywhere", registry.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(
        registry.importlib.metadata, "entry_points", lambda group: points if group == registry.ENTRY_POINT_GROUP else []
    )
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    assert "plugin-random" in list_condensers()  # the broken plugin is logged and left out
    assert get_condenser("plugin-random", DistillConfig(ipc=1)).config.ipc == 1


def test_idm_queue_is_reproducible_and_changes_the_embeddings(digits) -> None:
    config = DistillConfig(ipc=1, iterations=4, queue_size=2, queue_lifetime=2, **TINY)
    a = get_condenser("dm", config).condense(digits.train).synthetic
    b = get_condenser("dm", config).condense(digits.train).synthetic
    plain = get_condenser("dm", DistillConfig(ipc=1, iterations=4, **TINY)).condense(digits.train).synthetic
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, plain.images)


def test_idm_queue_trains_its_embedders_on_the_real_data(digits) -> None:
    engine = DistributionMatching(DistillConfig(ipc=1, iterations=30, queue_size=1, queue_lifetime=1000, **TINY))
    engine.condense(digits.train)
    (net, steps), = engine.loss._queue
    assert steps == 30
    with torch.no_grad():
        accuracy = (net(digits.test.images).argmax(1) == digits.test.labels).float().mean()
    assert accuracy > 0.3  # 30 SGD steps from a random network (chance: 0.1)


@pytest.mark.parametrize(
    ("changes", "options", "message"),
    [
        ({"compile": True}, {}, "compile"),
        ({"checkpoint_every": 5}, {}, "checkpoint_every"),
        ({}, {"embedder": torch.nn.Identity()}, "embedder"),
        ({"queue_lifetime": 0}, {}, "'distill.queue_lifetime' must be >= 1"),
    ],
)
def test_idm_queue_refuses_what_it_cannot_combine_with(changes: dict, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DistributionMatching(DistillConfig(queue_size=2, **changes), **options)
