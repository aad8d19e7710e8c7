"""ONE contract for every estimator the registry offers (the River discipline, sklearn verbs)."""

from __future__ import annotations

import io
import warnings

import joblib
import numpy as np
import pytest

from tidemill.tasks.features.encode import FeatureEncoder
from tidemill.tasks.learn.estimators import ESTIMATORS, make_estimator
from tidemill.tasks.learn.metrics import prequential_metrics
from tidemill.tasks.learn.state import ModelState, learn, parameters_sha256, predict

# every registry name, plus estimators given by dotted path (one needs non-negative input)
DOTTED = {
    "sklearn.linear_model.SGDClassifier": "classification",
    "sklearn.naive_bayes.ComplementNB": "classification",
    "sklearn.linear_model.SGDRegressor": "regression",
}
TASKS = {**{name: spec[3] for name, spec in ESTIMATORS.items()}, **DOTTED}
CLASSIFIERS = sorted(n for n, task in TASKS.items() if task == "classification")
REGRESSORS = sorted(n for n, task in TASKS.items() if task == "regression")
CLUSTERERS = sorted(n for n, task in TASKS.items() if task == "clustering")
ALL = CLASSIFIERS + REGRESSORS + CLUSTERERS
SEEDED = {"random_state": 0}


def _state(name: str) -> ModelState:
    task = TASKS[name]
    params: dict[str, object] = {}
    if name in DOTTED and "random_state" in make_estimator(name, {}, task).get_params():
        params = SEEDED
    return ModelState(
        estimator=make_estimator(name, params, task),
        encoder=FeatureEncoder(numeric=["a", "b"], categorical=[], max_categories=1),
        task=task,
        classes=["0", "1"] if task == "classification" else None,
    )


def _stream(task: str, seed: int = 0, batches: int = 30, size: int = 50):
    rng = np.random.default_rng(seed)
    centres = np.array([[-3.0, -3.0], [3.0, 3.0], [-3.0, 3.0]])
    for _ in range(batches):
        if task == "clustering":
            x = centres[rng.integers(0, 3, size)] + rng.normal(scale=0.3, size=(size, 2))
            yield x, np.zeros(size)
            continue
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
    key = {"classification": "accuracy", "regression": "mae", "clustering": "inertia"}[task]
    for x, y in _stream(task, seed):
        predicted = predict(state, x)
        if predicted is not None:
            scores.append(prequential_metrics(task, predicted, y)[key])
        state = learn(state, x, y)
    return state, scores


@pytest.mark.parametrize("name", ALL)
def test_learns_incrementally(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # nothing deprecated in the registry
        state, scores = _prequential(name)
    assert state.rows_seen == 30 * 50 and state.batches_seen == 30
    early, late = np.mean(scores[:3]), np.mean(scores[-10:])
    if state.task == "classification":
        assert late >= 0.8 and late >= early - 0.05, (early, late)  # learned, and kept it
    elif state.task == "clustering":  # 3 blobs of sd 0.3 in 2-d: inertia ~ 2 x 0.09 at best
        assert late < 0.5, (early, late)
    else:
        assert late < early and late < 0.5, (early, late)


@pytest.mark.parametrize("name", ALL)
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
    assert parameters_sha256(loaded) == parameters_sha256(state)


@pytest.mark.parametrize("name", ALL)
def test_deterministic_under_its_seed(name: str) -> None:
    x = np.random.default_rng(3).normal(size=(100, 2))
    a, b = _prequential(name)[0], _prequential(name)[0]
    pa, pb = predict(a, x), predict(b, x)
    assert pa is not None and pb is not None
    np.testing.assert_allclose(pa.scores, pb.scores, equal_nan=True)
    assert parameters_sha256(a) == parameters_sha256(b)
    other = _prequential(name, seed=1)[0]  # other rows: another model, another digest
    assert parameters_sha256(other) != parameters_sha256(a)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_a_first_batch_with_one_class_uses_the_declared_classes(name: str) -> None:
    state = learn(_state(name), np.array([[1.0, 0.0], [2.0, 0.5]]), np.array(["1", "1"]))
    assert [str(c) for c in state.estimator.classes_] == ["0", "1"]
    later = learn(state, np.array([[-1.0, 0.0], [-2.0, 0.5]]), np.array(["0", "0"]))
    assert later.rows_seen == 4
