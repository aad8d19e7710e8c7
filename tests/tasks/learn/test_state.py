import numpy as np
import pytest

from tidemill.tasks.features.encode import FeatureEncoder
from tidemill.tasks.learn.estimators import ModelSpecError, make_estimator
from tidemill.tasks.learn.metrics import prequential_metrics
from tidemill.tasks.learn.state import ModelState, Scores, learn, predict


def _state(task: str = "classification", name: str = "sgd_classifier") -> ModelState:
    params = {"loss": "log_loss"} if name == "sgd_classifier" else {}
    return ModelState(
        estimator=make_estimator(name, params, task),
        encoder=FeatureEncoder(numeric=["x"], categorical=[], max_categories=1),
        task=task,
        classes=["0", "1"] if task == "classification" else None,
    )


def test_unknown_wrong_task_and_bad_params_give_one_line_errors() -> None:
    with pytest.raises(ModelSpecError, match="unknown estimator 'forest'"):
        make_estimator("forest", {}, "classification")
    with pytest.raises(ModelSpecError, match="is for regression"):
        make_estimator("sgd_regressor", {}, "classification")
    with pytest.raises(ModelSpecError, match="rejects its params"):
        make_estimator("sgd_classifier", {"loss": "nope"}, "classification")
    with pytest.raises(ModelSpecError, match="no partial_fit"):
        make_estimator("sklearn.linear_model.LogisticRegression", {}, "classification")
    assert (
        type(make_estimator("sklearn.naive_bayes.GaussianNB", {}, "classification")).__name__
        == "GaussianNB"
    )


def test_learn_returns_a_new_state_and_leaves_the_old_one_untouched() -> None:
    state = _state()
    x = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    y = np.array(["0", "0", "1", "1"])
    assert predict(state, x) is None  # nothing learned yet: no scores
    new = learn(state, x, y)
    assert state.rows_seen == 0 and not hasattr(state.estimator, "coef_")
    assert new.rows_seen == 4 and new.batches_seen == 1
    scores = predict(new, x)
    assert scores is not None and scores.predictions.tolist() == ["0", "0", "1", "1"]
    assert np.all(np.diff(scores.scores) > 0)  # P(positive) rises with x


def test_first_batch_with_one_class_uses_the_declared_classes() -> None:
    new = learn(_state(), np.array([[1.0], [2.0]]), np.array(["1", "1"]))
    assert list(new.estimator.classes_) == ["0", "1"]


def test_same_seed_same_model() -> None:
    x = np.random.default_rng(1).normal(size=(50, 1))
    y = np.where(x[:, 0] > 0, "1", "0")
    a, b = learn(_state(), x, y), learn(_state(), x, y)
    np.testing.assert_array_equal(a.estimator.coef_, b.estimator.coef_)


def test_prequential_metrics_exact() -> None:
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    scores = Scores(
        predictions=np.array(["0", "1", "0"]),
        scores=proba[:, 1],
        proba=proba,
        labels=np.array(["0", "1"]),
    )
    metrics = prequential_metrics("classification", scores, np.array(["0", "1", "1"]))
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["log_loss"] == pytest.approx(-(np.log(0.9) + np.log(0.8) + np.log(0.4)) / 3)
    values = np.array([1.0, 2.0, 4.0])
    reg = prequential_metrics("regression", Scores(values, values, None), np.array([1.0, 3.0, 2.0]))
    assert reg == {"mae": pytest.approx(1.0), "rmse": pytest.approx(np.sqrt(5 / 3))}
    assert prequential_metrics("regression", Scores(values[:0], values[:0], None), values[:0]) == {}
