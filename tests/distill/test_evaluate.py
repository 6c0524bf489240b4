"""The evaluation protocol trains fresh networks and reports mean +- std over runs."""

from __future__ import annotations

import pytest
import torch

from fedcond.config import EvalConfig
from fedcond.distill.coreset import select_coreset
from fedcond.distill.evaluate import EvalResult, evaluate_synthetic
from fedcond.distill.synthetic import SyntheticSet


def test_real_coreset_beats_chance_and_noise(digits) -> None:
    config = EvalConfig(runs=2, epochs=30)
    coreset = select_coreset(digits.train, ipc=5, method="random", seed=0)
    result = evaluate_synthetic(coreset, digits.test, config, seed=0)
    assert len(result.accuracies) == 2
    assert result.mean > 0.6
    noise = SyntheticSet(torch.randn(50, 1, 8, 8), torch.arange(50) % 10, {"num_classes": 10})
    assert evaluate_synthetic(noise, digits.test, EvalConfig(runs=1, epochs=30)).mean < 0.3


def test_runs_are_reproducible(digits) -> None:
    coreset = select_coreset(digits.train, ipc=2, seed=1)
    a = evaluate_synthetic(coreset, digits.test, EvalConfig(runs=1, epochs=5), seed=4)
    b = evaluate_synthetic(coreset, digits.test, EvalConfig(runs=1, epochs=5), seed=4)
    assert a.accuracies == b.accuracies


def test_each_run_is_a_fresh_network_from_its_own_seed(digits) -> None:
    """Run k trains from seed + k: K runs are K different networks, not one network K times."""
    coreset = select_coreset(digits.train, ipc=2, seed=1)
    two = evaluate_synthetic(coreset, digits.test, EvalConfig(runs=2, epochs=5), seed=4)
    second_alone = evaluate_synthetic(coreset, digits.test, EvalConfig(runs=1, epochs=5), seed=5)
    assert two.accuracies[1] == second_alone.accuracies[0]
    assert two.accuracies[0] != two.accuracies[1] and two.std > 0


def test_shape_mismatch_is_refused(digits) -> None:
    wrong = SyntheticSet(torch.zeros(10, 1, 28, 28), torch.arange(10), {"num_classes": 10})
    with pytest.raises(ValueError, match="dataset's images"):
        evaluate_synthetic(wrong, digits.test, EvalConfig(runs=1, epochs=1))


def test_eval_result_statistics() -> None:
    result = EvalResult([0.5, 0.7])
    assert result.mean == pytest.approx(0.6)
    assert result.std == pytest.approx(0.1)
    assert "60.00 ± 10.00%" == str(result)


def test_a_bare_pair_with_labels_outside_the_classes_is_one_clear_error(digits) -> None:
    from fedcond.distill.synthetic import SyntheticSetError

    images = digits.train.images[:4]
    with pytest.raises(SyntheticSetError, match=r"labels span \[0, 12\], outside the valid range \[0, 10\)"):
        evaluate_synthetic((images, torch.tensor([0, 1, 2, 12])), digits.test, EvalConfig(runs=1, epochs=1))
    with pytest.raises(SyntheticSetError, match="the dataset's images are"):
        evaluate_synthetic((torch.zeros(4, 1, 7, 7), torch.arange(4)), digits.test, EvalConfig(runs=1, epochs=1))
    # int32 labels and float64 images are widened, not refused
    result = evaluate_synthetic(
        (images.double(), digits.train.labels[:4].int()), digits.test, EvalConfig(runs=1, epochs=1)
    )
    assert len(result.accuracies) == 1


def test_predict_logits_and_herding_features_give_the_model_its_mode_back(digits) -> None:
    from fedcond.distill.coreset import HerdingSelector
    from fedcond.models import get_model
    from fedcond.training import predict_logits

    model = get_model("convnet", digits.spec, generator=torch.Generator().manual_seed(0))
    for training in (True, False):
        model.train(training)
        assert predict_logits(model, digits.test.images[:8]).shape == (8, 10)
        assert model.training is training
        HerdingSelector(model).features(digits.test.images[:8], generator=torch.Generator().manual_seed(0))
        assert model.training is training


def test_progress_hears_every_epoch_of_every_network_and_each_accuracy(digits) -> None:
    from fedcond.distill.evaluate import EvalProgress

    coreset = select_coreset(digits.train, ipc=2, seed=1)
    steps: list[EvalProgress] = []
    watched = evaluate_synthetic(coreset, digits.test, EvalConfig(runs=2, epochs=3), seed=4, progress=steps.append)
    assert [(s.run, s.epoch, s.accuracy is None) for s in steps] == [
        (1, 1, True), (1, 2, True), (1, 3, True), (1, 3, False),
        (2, 1, True), (2, 2, True), (2, 3, True), (2, 3, False),
    ]
    assert all(s.runs == 2 and s.epochs == 3 for s in steps)
    assert [s.accuracy for s in steps if s.accuracy is not None] == watched.accuracies
    assert [s.fraction for s in steps if s.accuracy is None] == pytest.approx([k / 6 for k in range(1, 7)])
    # watching changes nothing: same seeds, same accuracies
    unwatched = evaluate_synthetic(coreset, digits.test, EvalConfig(runs=2, epochs=3), seed=4)
    assert unwatched.accuracies == watched.accuracies
