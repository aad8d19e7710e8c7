"""The estimators a pipeline can name, and making one: every entry learns online
(`partial_fit`) and serves one task (classification, regression or clustering)."""

from __future__ import annotations

import importlib
from typing import Any

from sklearn.base import BaseEstimator
from sklearn.utils import get_tags

from tidemill.errors import TidemillError

# name -> (module, class, defaults, task it serves). passive_aggressive is SGD with the PA-I
# step: scikit-learn 1.8 deprecated PassiveAggressiveClassifier for exactly this.
ESTIMATORS: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "sgd_classifier": (
        "sklearn.linear_model",
        "SGDClassifier",
        {"random_state": 0},
        "classification",
    ),
    "sgd_regressor": ("sklearn.linear_model", "SGDRegressor", {"random_state": 0}, "regression"),
    "perceptron": ("sklearn.linear_model", "Perceptron", {"random_state": 0}, "classification"),
    "passive_aggressive": (
        "sklearn.linear_model",
        "SGDClassifier",
        {"loss": "hinge", "penalty": None, "learning_rate": "pa1", "eta0": 1.0, "random_state": 0},
        "classification",
    ),
    "bernoulli_nb": ("sklearn.naive_bayes", "BernoulliNB", {}, "classification"),
    # counts-like input: the matrix is split into its positive and negative parts
    "multinomial_nb": ("sklearn.naive_bayes", "MultinomialNB", {}, "classification"),
    "gaussian_nb": ("sklearn.naive_bayes", "GaussianNB", {}, "classification"),
    "mlp_classifier": (
        "sklearn.neural_network",
        "MLPClassifier",
        # partial_fit makes one Adam step per batch: the default 0.001 barely moves in 30
        {"hidden_layer_sizes": (32,), "random_state": 0, "learning_rate_init": 0.01},
        "classification",
    ),
    "minibatch_kmeans": (
        "sklearn.cluster",
        "MiniBatchKMeans",
        {"n_clusters": 8, "random_state": 0, "n_init": 1},
        "clustering",
    ),
}


class ModelSpecError(TidemillError, ValueError):
    """An estimator name or parameters that cannot make a model; one actionable line."""


def make_estimator(name: str, params: dict[str, Any], task: str) -> BaseEstimator:
    """A fresh estimator from a registry name or a dotted path, validated for `task`."""
    if name in ESTIMATORS:
        module_name, class_name, defaults, _ = ESTIMATORS[name]
        params = {**defaults, **params}
    elif "." in name:
        module_name, _, class_name = name.rpartition(".")
    else:
        known = ", ".join(sorted(ESTIMATORS))
        raise ModelSpecError(f"unknown estimator '{name}' (known: {known}, or a dotted path)")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise ModelSpecError(f"cannot import estimator '{module_name}.{class_name}'") from None
    if not hasattr(cls, "partial_fit"):
        raise ModelSpecError(f"estimator '{name}' has no partial_fit, so it cannot learn online")
    try:
        estimator = cls(**params)
        estimator._validate_params()
    except (TypeError, ValueError) as error:
        raise ModelSpecError(f"estimator '{name}' rejects its params: {error}") from None
    serves = _task_of(estimator)
    if serves != task:
        raise ModelSpecError(f"estimator '{name}' is for {serves}, but the pipeline task is {task}")
    return estimator


def _task_of(estimator: BaseEstimator) -> str:
    kind = get_tags(estimator).estimator_type
    return {
        "classifier": "classification",
        "regressor": "regression",
        "clusterer": "clustering",
    }.get(str(kind), "classification")
