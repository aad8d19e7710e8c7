"""Merging shard models: each shard learned its rows from the same starting model; the
merge gives the model one process would have had.

Exact where the model is a sum of per-row statistics (naive Bayes counts, Gaussian means
and variances, the encoder's running moments, mini-batch k-means centres when no centre
was reassigned) and a row-weighted average of parameters where it is not (linear models,
MLP weights and optimiser moments): one-shot parameter averaging, which is close to
sequential SGD when each shard moves the parameters only a little.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.cluster import MiniBatchKMeans
from sklearn.linear_model import (
    PassiveAggressiveClassifier,
    PassiveAggressiveRegressor,
    Perceptron,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.naive_bayes import BernoulliNB, ComplementNB, GaussianNB, MultinomialNB
from sklearn.neural_network import MLPClassifier, MLPRegressor

from tidemill.errors import TidemillError
from tidemill.tasks.features.encode import FeatureEncoder, RunningMoments
from tidemill.tasks.learn.state import ModelState

_LINEAR = (
    SGDClassifier,
    SGDRegressor,
    Perceptron,
    PassiveAggressiveClassifier,
    PassiveAggressiveRegressor,
)
_DISCRETE_NB = (BernoulliNB, MultinomialNB, ComplementNB)
_MLP = (MLPClassifier, MLPRegressor)
_LINEAR_ARRAYS = (
    "coef_",
    "intercept_",
    "_standard_coef",
    "_standard_intercept",
    "_average_coef",
    "_average_intercept",
)
MERGEABLE = (*_LINEAR, *_DISCRETE_NB, GaussianNB, *_MLP, MiniBatchKMeans)
"""Estimator classes whose shard models `merge_models` can combine."""


class UnmergeableModel(TidemillError, ValueError):
    """Shard models that cannot be combined into one; the message says why and what can."""


def merge_models(start: ModelState, shards: list[tuple[ModelState, int]]) -> ModelState:
    """One model from shard models that each learned `rows` rows starting from `start`.

    Counters count what one process learning all the shards' rows would have counted
    (rows_seen, SGD's t_, Adam's step count add up); the batch counts once. Drift detectors
    and the feature-shift monitor are the coordinator's: they are taken from `start`.
    Raises UnmergeableModel for estimators outside MERGEABLE or shards that do not belong
    together."""
    if not shards:
        raise UnmergeableModel("nothing to merge: no shard models were given")
    for model, rows in shards:
        if rows < 0:
            raise UnmergeableModel(f"a shard cannot have learned {rows} rows")
        if type(model.estimator) is not type(start.estimator):
            raise UnmergeableModel(
                f"a shard holds {type(model.estimator).__name__}, the start model "
                f"{type(start.estimator).__name__}: shards must learn from the same start"
            )
        if model.task != start.task or model.classes != start.classes:
            raise UnmergeableModel("shards disagree with the start model on task or classes")
    if len(shards) == 1:
        return copy.deepcopy(shards[0][0])
    merged = copy.deepcopy(shards[0][0])
    merged.estimator = merge_estimators(start.estimator, [(m.estimator, r) for m, r in shards])
    merged.encoder = merge_encoders(start.encoder, [m.encoder for m, _ in shards])
    merged.rows_seen = start.rows_seen + sum(m.rows_seen - start.rows_seen for m, _ in shards)
    merged.batches_seen = max(m.batches_seen for m, _ in shards)
    merged.detector = copy.deepcopy(start.detector)
    merged.shift = copy.deepcopy(start.shift)
    return merged


def merge_estimators(start: Any, shards: list[tuple[Any, int]]) -> Any:
    """The estimator one process would have after the shards' rows (exact for sufficient
    statistics), or the row-weighted average of the shards' parameters (linear, MLP)."""
    if not isinstance(start, MERGEABLE):
        known = ", ".join(sorted(cls.__name__ for cls in MERGEABLE))
        raise UnmergeableModel(
            f"cannot merge shards of {type(start).__name__}: only these estimators can be "
            f"learned in parallel: {known}"
        )
    weights = np.array([rows for _, rows in shards], dtype=np.float64)
    if weights.sum() <= 0:
        raise UnmergeableModel("the shards learned no rows: nothing to average")
    weights = weights / weights.sum()
    models = [model for model, _ in shards]
    merged = copy.deepcopy(models[0])
    if isinstance(start, _LINEAR):
        _merge_linear(merged, start, models, weights)
    elif isinstance(start, _DISCRETE_NB):
        _merge_discrete_nb(merged, start, models)
    elif isinstance(start, GaussianNB):
        _merge_gaussian_nb(merged, start, models)
    elif isinstance(start, _MLP):
        _merge_mlp(merged, start, models, weights)
    else:
        _merge_kmeans(merged, start, models)
    return merged


def _mean(arrays: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
    return np.tensordot(weights, np.stack(arrays), axes=1)


def _added(start: Any, models: Sequence[Any], name: str, before: float) -> float:
    """`start`'s counter plus what every shard added to it (`before`: its value unfitted)."""
    base = getattr(start, name, before)
    return base + sum(getattr(m, name) - base for m in models)


def _merge_linear(merged: Any, start: Any, models: list[Any], weights: np.ndarray) -> None:
    for name in _LINEAR_ARRAYS:
        if all(isinstance(getattr(m, name, None), np.ndarray) for m in models):
            setattr(merged, name, _mean([getattr(m, name) for m in models], weights))
    merged.t_ = _added(start, models, "t_", 1.0)  # partial_fit starts t_ at 1


def _merge_discrete_nb(merged: Any, start: Any, models: list[Any]) -> None:
    for name in ("class_count_", "feature_count_"):
        base = getattr(start, name, np.zeros_like(getattr(models[0], name)))
        setattr(merged, name, base + sum(getattr(m, name) - base for m in models))
    if isinstance(merged, ComplementNB):
        merged.feature_all_ = merged.feature_count_.sum(axis=0)
    merged._update_feature_log_prob(merged._check_alpha())
    merged._update_class_log_prior(class_prior=merged.class_prior)


def _merge_gaussian_nb(merged: Any, start: Any, models: list[Any]) -> None:
    """Per class: count, mean and variance merged by the parallel-variance formula.

    scikit-learn keeps var_ + epsilon_, and each partial_fit recomputes epsilon_ from its own
    batch before removing it from the stored variance; the merge undoes each shard's epsilon,
    recovers what the shard's rows alone contributed, and applies the epsilon of the whole
    batch, as one call on all the rows would."""
    fitted = hasattr(start, "theta_")
    shape = models[0].theta_.shape
    n0 = start.class_count_ if fitted else np.zeros(shape[0])
    mu0 = start.theta_ if fitted else np.zeros(shape)
    parts = []  # (count, mean, M2) per class of each shard's own rows
    for model in models:
        base_var = start.var_ - model.epsilon_ if fitted else np.zeros(shape)
        parts.append(
            _unmerge(
                (n0[:, None], mu0, n0[:, None] * base_var),
                (
                    model.class_count_[:, None],
                    model.theta_,
                    model.class_count_[:, None] * (model.var_ - model.epsilon_),
                ),
            )
        )
    batch = parts[0]
    for part in parts[1:]:
        batch = _combine(batch, part)
    # every row of the batch, whatever its class: the variance epsilon is made from
    overall = (np.zeros(1), np.zeros(shape[1]), np.zeros(shape[1]))
    for k in range(shape[0]):
        overall = _combine(overall, (batch[0][k], batch[1][k], batch[2][k]))
    epsilon = merged.var_smoothing * float(np.max(overall[2] / max(float(overall[0][0]), 1.0)))
    base_var = start.var_ - epsilon if fitted else np.zeros(shape)
    count, mean, m2 = _combine((n0[:, None], mu0, n0[:, None] * base_var), batch)
    merged.class_count_ = count[:, 0].copy()
    merged.theta_ = mean
    merged.var_ = np.divide(m2, count, out=np.zeros(shape), where=count > 0) + epsilon
    merged.epsilon_ = np.float64(epsilon)
    if merged.priors is None:
        merged.class_prior_ = merged.class_count_ / merged.class_count_.sum()


Moments = tuple[np.ndarray, np.ndarray, np.ndarray]  # count, mean, M2 (sum of sq. deviations)


def _combine(a: Moments, b: Moments) -> Moments:
    """Chan et al.'s parallel merge of two (count, mean, M2), elementwise."""
    n = a[0] + b[0]
    safe = np.where(n > 0, n, 1.0)
    delta = b[1] - a[1]
    mean = np.where(n > 0, a[1] + delta * b[0] / safe, a[1])
    m2 = a[2] + b[2] + delta * delta * a[0] * b[0] / safe
    return n, mean, m2


def _unmerge(start: Moments, total: Moments) -> Moments:
    """The (count, mean, M2) that, merged into `start`, gives `total`: Chan's formula solved
    for the added part (zero where nothing was added)."""
    n = total[0] - start[0]
    safe = np.where(n > 0, n, 1.0)
    mean = np.where(n > 0, (total[0] * total[1] - start[0] * start[1]) / safe, 0.0)
    delta = mean - start[1]
    m2 = total[2] - start[2] - delta * delta * start[0] * n / np.where(total[0] > 0, total[0], 1.0)
    return np.maximum(n, 0.0), mean, np.where(n > 0, np.maximum(m2, 0.0), 0.0)


def _merge_mlp(merged: Any, start: Any, models: list[Any], weights: np.ndarray) -> None:
    if not hasattr(start, "coefs_") and start.random_state is None:
        raise UnmergeableModel(
            f"{type(start).__name__} shards that start unfitted need a fixed random_state "
            "(each worker draws its own initial weights otherwise): set one, or learn the "
            "first batch in one process"
        )
    for name in ("coefs_", "intercepts_"):
        layers = zip(*(getattr(m, name) for m in models), strict=True)
        setattr(merged, name, [_mean(layer, weights) for layer in layers])
    optimizer, first = merged._optimizer, models[0]._optimizer
    for name in ("ms", "vs", "velocities"):
        if hasattr(first, name):
            layers = zip(*(getattr(m._optimizer, name) for m in models), strict=True)
            setattr(optimizer, name, [_mean(layer, weights) for layer in layers])
    if hasattr(first, "t"):  # Adam's step count drives its bias correction
        optimizer.t = int(
            _added(getattr(start, "_optimizer", None), [m._optimizer for m in models], "t", 0)
        )
    merged.t_ = int(_added(start, models, "t_", 0))
    merged.loss_ = float(np.dot(weights, [m.loss_ for m in models]))
    merged.loss_curve_ = [*getattr(start, "loss_curve_", []), merged.loss_]
    merged.best_loss_ = min(getattr(start, "best_loss_", np.inf), merged.loss_)


def _merge_kmeans(merged: Any, start: Any, models: list[Any]) -> None:
    """Centres as the count-weighted mean of what each shard added to them. Shards that
    started unfitted drew their own initial centres: those are first matched to the first
    shard's centres (minimum total squared distance)."""
    fitted = hasattr(start, "cluster_centers_")
    centres = [m.cluster_centers_ for m in models]
    counts = [m._counts for m in models]
    labels = [getattr(m, "labels_", None) for m in models]
    if not fitted:
        from scipy.optimize import linear_sum_assignment

        for i in range(1, len(models)):
            cost = ((centres[0][:, None, :] - centres[i][None, :, :]) ** 2).sum(axis=2)
            _, order = linear_sum_assignment(cost)
            centres[i], counts[i] = centres[i][order], counts[i][order]
            if labels[i] is not None:
                labels[i] = np.argsort(order)[labels[i]]
    c0 = start._counts if fitted else np.zeros_like(counts[0])
    x0 = start.cluster_centers_ if fitted else np.zeros_like(centres[0])
    total = c0 + sum(c - c0 for c in counts)
    sums = c0[:, None] * x0 + sum(
        c[:, None] * x - c0[:, None] * x0 for c, x in zip(counts, centres, strict=True)
    )
    keep = x0 if fitted else centres[0]
    merged.cluster_centers_ = np.where(
        total[:, None] > 0, sums / np.where(total > 0, total, 1.0)[:, None], keep
    )
    merged._counts = np.maximum(total, 0.0)
    merged.n_steps_ = getattr(start, "n_steps_", 0) + 1
    if all(v is not None for v in labels):
        merged.labels_ = np.concatenate(labels)  # type: ignore[arg-type]
        merged.inertia_ = float(sum(m.inertia_ for m in models))


def merge_encoders(start: FeatureEncoder, shards: list[FeatureEncoder]) -> FeatureEncoder:
    """`start` plus what every shard encoder learned from its rows: running moments merged
    exactly (Chan), new categories in shard order up to max_categories — the vocabulary one
    encoder would have built from the shards' rows in order, since shards are contiguous."""
    for encoder in shards:
        if (encoder.numeric, encoder.categorical, encoder.cyclic, encoder.max_categories) != (
            start.numeric,
            start.categorical,
            start.cyclic,
            start.max_categories,
        ) or encoder.hash_buckets != start.hash_buckets:
            raise UnmergeableModel("shard encoders have other columns than the start encoder")
    merged = copy.deepcopy(start)
    for name in start.numeric:
        base = start.moments[name]
        whole = _as_moments(base)
        for encoder in shards:
            whole = _combine(whole, _unmerge(_as_moments(base), _as_moments(encoder.moments[name])))
        merged.moments[name] = RunningMoments(
            float(whole[0][0]), float(whole[1][0]), float(whole[2][0])
        )
    for name in start.categorical if not start.hash_buckets else []:
        vocab = merged.vocab[name]
        for encoder in shards:
            for value in sorted(encoder.vocab[name], key=encoder.vocab[name].__getitem__):
                if value not in vocab and len(vocab) < start.max_categories:
                    vocab[value] = len(vocab)
    return merged


def _as_moments(moments: RunningMoments) -> Moments:
    return (
        np.array([moments.count]),
        np.array([moments.mean]),
        np.array([moments.m2]),
    )
