"""The state of one model version, and how it predicts and learns.

A :class:`ModelState` is everything one model version needs to predict: the
scikit-learn estimator, the feature encoder, the class list, counters and the drift
detector watching its errors. It is what an artifact file holds. `learn` never mutates
its input state: it returns a new one, so a batch that fails to commit leaves the
serving model untouched.

Tasks: classification and regression learn labelled rows; clustering
(`minibatch_kmeans`) learns every row, and its metric is the inertia (mean squared
distance to the nearest centre) of rows it had not seen yet.
"""

from __future__ import annotations

import copy
import hashlib
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import sklearn
from sklearn.base import BaseEstimator
from sklearn.utils import get_tags

from tidemill.tasks.drift.detectors import Adwin, PageHinkley
from tidemill.tasks.drift.shift import FeatureShift
from tidemill.tasks.features.encode import FeatureEncoder


def _model_input(estimator: BaseEstimator, x: np.ndarray) -> np.ndarray:
    """`x` as the estimator takes it: estimators that accept only non-negative input
    (multinomial naive Bayes) get [max(x, 0), max(-x, 0)], which keeps every value's
    magnitude and sign."""
    if get_tags(estimator).input_tags.positive_only:
        return np.hstack([np.maximum(x, 0.0), np.maximum(-x, 0.0)])
    return x


@dataclass
class ModelState:
    """One model version's content: estimator + encoder + counters."""

    estimator: BaseEstimator
    encoder: FeatureEncoder
    task: str
    classes: list[str] | None
    rows_seen: int = 0
    batches_seen: int = 0
    candidate: str = "main"
    detector: Adwin | PageHinkley | None = None  # watches this model's per-row errors
    shift: FeatureShift | None = None  # PSI of the numeric inputs against a reference

    @property
    def fitted(self) -> bool:
        """True once the estimator has learned at least one row."""
        return self.rows_seen > 0

    @property
    def feature_names(self) -> list[str]:
        """Matrix column names the estimator sees."""
        return self.encoder.feature_names


@dataclass(frozen=True)
class Scores:
    """Predictions for every row of a batch, made before the batch is learned."""

    predictions: np.ndarray  # labels (str) or values (float)
    scores: np.ndarray  # P(positive class) or the predicted value; NaN when unknown
    proba: np.ndarray | None  # (n, n_classes) when the estimator has predict_proba
    labels: np.ndarray | None = None  # class of each proba column (estimator.classes_)

    def subset(self, mask: np.ndarray) -> Scores:
        """The scores of the rows where `mask` is true."""
        return Scores(
            predictions=self.predictions[mask],
            scores=self.scores[mask],
            proba=self.proba[mask] if self.proba is not None else None,
            labels=self.labels,
        )


# The matrix comes from FeatureEncoder (finite by construction) and the parameters were
# validated once by make_estimator: scikit-learn's per-call checks cost more than learning
# a 500-row batch, so they are skipped where tidemill calls the estimator.
_TRUSTED = {"assume_finite": True, "skip_parameter_validation": True}


def predict(state: ModelState, x: np.ndarray) -> Scores | None:
    """Scores of `state` on `x`, or None while the model has learned nothing.

    Classifiers with probabilities predict the most probable class (what their `predict`
    does, without computing it twice). Clustering: the prediction is the nearest centre,
    the score its squared distance."""
    if not state.fitted or x.shape[0] == 0:
        return None
    estimator: Any = state.estimator
    x = _model_input(estimator, x)
    with sklearn.config_context(**_TRUSTED):
        if state.task == "regression":
            values = estimator.predict(x).astype(np.float64)
            return Scores(predictions=values, scores=values, proba=None)
        if state.task == "clustering":
            distances = estimator.transform(x)
            predictions = distances.argmin(axis=1)
            return Scores(
                predictions=predictions.astype(str),
                scores=distances.min(axis=1) ** 2,
                proba=None,
            )
        labels = np.asarray(estimator.classes_).astype(str)
        positive = int(np.flatnonzero(labels == str(state.classes[-1]))[0]) if state.classes else -1
        proba = estimator.predict_proba(x) if hasattr(estimator, "predict_proba") else None
        if proba is not None:
            predicted = labels[proba.argmax(axis=1)]
            scores = proba[:, positive]
        else:
            predicted = np.asarray(estimator.predict(x)).astype(str)
            if hasattr(estimator, "decision_function"):
                decision = estimator.decision_function(x)
                scores = decision if decision.ndim == 1 else decision[:, positive]
            else:
                scores = np.full(x.shape[0], np.nan)
    return Scores(
        predictions=predicted,
        scores=scores.astype(np.float64),
        proba=proba,
        labels=labels,
    )


def learn(state: ModelState, x: np.ndarray, y: np.ndarray, *, in_place: bool = False) -> ModelState:
    """A new state that has also learned (x, y); `state` itself is left as it was (unless
    `in_place`, for a caller that owns a private copy already)."""
    new = state if in_place else copy.deepcopy(state)
    if x.shape[0] == 0:
        return new
    estimator: Any = new.estimator
    x = _model_input(estimator, x)
    with sklearn.config_context(**_TRUSTED):
        if state.task == "classification":
            estimator.partial_fit(x, y.astype(str), classes=np.array(state.classes, dtype=str))
        elif state.task == "clustering":
            estimator.partial_fit(x)
        else:
            estimator.partial_fit(x, y.astype(np.float64))
    new.rows_seen += int(x.shape[0])
    new.batches_seen += 1
    return new


def parameters_sha256(state: ModelState) -> str:
    """SHA-256 of what the model has learned: the estimator's fitted attributes and the
    encoder's statistics, serialised in a fixed order. Two models that learned the same
    rows in the same order have the same digest; counters and drift detectors are left
    out (they do not change a prediction)."""
    digest = hashlib.sha256()
    for part in (state.estimator, state.encoder):
        for name, value in sorted(vars(part).items()):
            digest.update(name.encode())
            digest.update(_canonical(value))
    return digest.hexdigest()


def _canonical(value: Any) -> bytes:
    if isinstance(value, np.ndarray):
        return value.dtype.str.encode() + repr(value.shape).encode() + value.tobytes()
    if isinstance(value, list | tuple):
        return b"[" + b",".join(_canonical(v) for v in value) + b"]"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: repr(item[0]))
        return b"{" + b",".join(_canonical(k) + b":" + _canonical(v) for k, v in items) + b"}"
    if value is None or isinstance(value, str | bytes | bool | int | float | np.generic):
        return repr(value).encode()
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return type(value).__name__.encode() + _canonical(dict(vars(value)))
    return pickle.dumps(value, protocol=5)  # extension objects (loss functions, RNG states)
