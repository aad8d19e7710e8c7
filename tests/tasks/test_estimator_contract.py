"""ONE contract for every estimator the registry offers (the River discipline, sklearn verbs)."""

from __future__ import annotations

import io
import warnings

import joblib
import numpy as np
import pytest

from tasks.encode import FeatureEncoder
from tasks.metrics import prequential_metrics
from tasks.model import ESTIMATORS, ModelState, learn, make_estimator, predict

CLASSIFIERS = sorted(n for n, spec in ESTIMATORS.items() if spec[3] == "classification")
REGRESSORS = sorted(n for n, spec in ESTIMATORS.items() if spec[3] == "regression")


def _state(name: str) -> ModelState:
    task = ESTIMATORS[name][3]
    return ModelState(
        estimator=make_estimator(name, {}, task),
        encoder=FeatureEncoder(numeric=["a", "b"], categorical=[], max_categories=1),
        task=task,
        classes=["0", "1"] if task == "classification" else None,
    )


def _stream(task: str, seed: int = 0, batches: int = 30, size: int = 50):
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        x = rng.normal(size=(size, 2))
        signal = 2.0 * x[:, 0] - x[:, 1]
        y = (
            np.where(signal > 0, "1", "0")
            if task == "classification"
            else signal + rng.normal(scale=0.1, size=size)
        )
        yield x, y


def _prequential(name: str, seed: int = 0) -> tuple[ModelState, list[float]]:
    state, scores = _state(name), []
    task = state.task
    key = "accuracy" if task == "classification" else "mae"
    for x, y in _stream(task, seed):
        predicted = predict(state, x)
        if predicted is not None:
            scores.append(prequential_metrics(task, predicted, y)[key])
        state = learn(state, x, y)
    return state, scores


@pytest.mark.parametrize("name", CLASSIFIERS + REGRESSORS)
def test_learns_incrementally(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # nothing deprecated in the registry
        state, scores = _prequential(name)
    assert state.rows_seen == 30 * 50 and state.batches_seen == 30
    early, late = np.mean(scores[:3]), np.mean(scores[-10:])
    if state.task == "classification":
        assert late >= 0.8 and late >= early - 0.05, (early, late)  # learned, and kept it
    else:
        assert late < early and late < 0.5, (early, late)


@pytest.mark.parametrize("name", CLASSIFIERS + REGRESSORS)
def test_survives_save_and_load_with_identical_predictions(name: str) -> None:
    state, _ = _prequential(name)
    buffer = io.BytesIO()
    joblib.dump(state, buffer)
    buffer.seek(0)
    loaded = joblib.load(buffer)
    x = np.random.default_rng(9).normal(size=(100, 2))
    before, after = predict(state, x), predict(loaded, x)
    assert before is not None and after is not None
    np.testing.assert_array_equal(before.predictions, after.predictions)
    np.testing.assert_allclose(before.scores, after.scores)


@pytest.mark.parametrize("name", CLASSIFIERS + REGRESSORS)
def test_deterministic_under_its_seed(name: str) -> None:
    x = np.random.default_rng(3).normal(size=(100, 2))
    a, b = _prequential(name)[0], _prequential(name)[0]
    pa, pb = predict(a, x), predict(b, x)
    assert pa is not None and pb is not None
    np.testing.assert_allclose(pa.scores, pb.scores, equal_nan=True)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_a_first_batch_with_one_class_uses_the_declared_classes(name: str) -> None:
    state = learn(_state(name), np.array([[1.0, 0.0], [2.0, 0.5]]), np.array(["1", "1"]))
    assert [str(c) for c in state.estimator.classes_] == ["0", "1"]
    later = learn(state, np.array([[-1.0, 0.0], [-2.0, 0.5]]), np.array(["0", "0"]))
    assert later.rows_seen == 4
