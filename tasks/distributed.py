"""Data-parallel incremental learning: one batch split into contiguous shards, each shard
scored and learned by its own worker from the same starting model, the shard models merged
into one model version that records where its parts came from.

Merging is exact where the model is a sum of per-row statistics (naive Bayes counts, Gaussian
means and variances, the encoder's running moments, mini-batch k-means centres when no
centre was reassigned) and a row-weighted average of parameters where it is not (linear
models, MLP weights and optimiser moments): one-shot parameter averaging, which is close to
sequential SGD when each shard moves the parameters only a little.

Pure: frames, matrices and models in, models out. Where the shards run is the caller's
choice, given as a `ShardMap` (`sequential_map` here, `dask_map(client)` on a Dask cluster);
this module imports no Dask unless `dask_map` is used.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
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
from tidemill.tasks.encode import FeatureEncoder, RunningMoments
from tidemill.tasks.model import ModelState, Scores, learn, parameters_sha256, predict
from tidemill.tasks.online import Learned, Learner, ShardRecord, labelled_rows

if TYPE_CHECKING:
    from distributed import Client

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

# ---- when distributing pays (benchmarks/distributed.py, benchmarks/results/distributed.txt)

MIN_SHARD_ROWS = 50_000
"""A batch is split only if every shard gets at least this many rows — more than any shard
measured, because no measured shard size paid reliably. On 2 shared cores (LocalCluster,
BLAS at 1 thread everywhere, three full runs of benchmarks/distributed.py): at 500 and
5,000-row batches sharding ran at 0.05-0.63x of one process for every estimator and stream:
a Dask round trip costs 33-40 ms (median of 20), more than the whole 5,000-row step in one
process (9-27 ms). At 50,000-row batches (25,000-row shards with 2 workers, 12,500 with 4)
the MLP ran at 0.35-0.80x and linear models at 0.33-0.77x; only gaussian_nb on the
202-column flights encoding reached 0.64-1.17x (0.42-0.88x on the synthetic stream). Lower
it only after the benchmark shows a gain on workers that have cores of their own."""

HEAVY_ESTIMATORS = frozenset({"mlp_classifier"})
"""Registry names whose per-row cost could pay for the round trip: the MLP, the costliest
partial_fit in the registry (in a one-off profile a 25,000-row flights shard cost its worker
0.18-0.20 CPU-s against 0.42 CPU-s for the 50,000-row batch in one process; the coordinator
added about 0.06 CPU-s). Linear models and naive Bayes learn at 0.2-0.7 M rows/s in one
process: the round trip and shipping cost about what a second core would save, and merged
linear models lost up to 1.6 accuracy points on flights."""


def should_distribute(estimator_name: str, batch_rows: int, workers: int) -> bool:
    """True when sharding a `batch_rows`-row batch over `workers` Dask workers is expected
    to beat one process: a heavy estimator (HEAVY_ESTIMATORS), at least two workers, and at
    least MIN_SHARD_ROWS rows in every shard. `workers` must count workers that have a core
    of their own. With the measured thresholds no configuration benchmarked on the project's
    2-core machines qualifies: the pipeline keeps one process there."""
    if workers < 2 or estimator_name not in HEAVY_ESTIMATORS:
        return False
    return batch_rows // workers >= MIN_SHARD_ROWS


class UnmergeableModel(TidemillError, ValueError):
    """Shard models that cannot be combined into one; the message says why and what can."""


# ---------------------------------------------------------------- splitting


def shard_bounds(rows: int, shards: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard: contiguous, in batch order, sizes differing by at most one
    row, never empty (fewer shards than asked when there are fewer rows)."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    count = min(shards, rows)
    edges = [rows * i // count for i in range(count + 1)] if count else [0]
    return list(pairwise(edges))


def split_batch(x: np.ndarray, y: np.ndarray, shards: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(x, y) cut into contiguous shards (views, no copy), in order."""
    return [(x[a:b], y[a:b]) for a, b in shard_bounds(x.shape[0], shards)]


def split_frame(frame: pl.DataFrame, shards: int) -> list[pl.DataFrame]:
    """`frame` cut into contiguous shards, in order."""
    return [frame.slice(a, b - a) for a, b in shard_bounds(frame.height, shards)]


# ---------------------------------------------------------------- the worker's part


@dataclass(frozen=True)
class ShardResult:
    """What one worker returns for its shard."""

    model: ModelState  # the starting model after learning the shard
    rows: int  # rows it learned (the merge weight)
    scores: Scores | None  # every row of the shard, scored before learning
    sha256: str  # parameters_sha256 of `model`
    cpu_seconds: float  # CPU time of the worker process on this shard


def score_and_learn(state: ModelState, frame: pl.DataFrame, target: str | None) -> ShardResult:
    """Encode `frame` with `state`'s encoder as it is (the coordinator has already folded the
    whole batch into it), score every row, then learn the labelled rows. `state` is left as
    it was. Runs on a worker: raw rows travel, not the (much wider) one-hot matrix."""
    began = time.process_time()
    x = state.encoder.transform(frame)
    labelled = labelled_rows(frame, state.task, target)
    y = (
        frame[target].to_numpy()[labelled]
        if target is not None and state.task != "clustering"
        else np.zeros(int(labelled.sum()))
    )
    scores = predict(state, x)
    learned = learn(state, x[labelled], y) if labelled.any() else copy.deepcopy(state)
    digest = parameters_sha256(learned)
    return ShardResult(learned, int(labelled.sum()), scores, digest, time.process_time() - began)


# ---------------------------------------------------------------- where shards run

ShardCall = tuple[ModelState, pl.DataFrame, str | None]
ShardMap = Callable[[Sequence[ShardCall]], list[ShardResult]]
"""Runs `score_and_learn` on every (state, shard, target) and returns the results in order."""


def sequential_map(calls: Sequence[ShardCall]) -> list[ShardResult]:
    """Every shard in this process, one after the other (the reference for tests)."""
    return [score_and_learn(*call) for call in calls]


def dask_map(client: Client) -> ShardMap:
    """Shards on a Dask cluster (a LocalCluster here, a scheduler address in production):
    shard i goes to worker i mod n, so a batch of n shards occupies every worker once."""
    workers = sorted(client.scheduler_info()["workers"])

    def run(calls: Sequence[ShardCall]) -> list[ShardResult]:
        futures = [
            client.submit(
                score_and_learn,
                *call,
                pure=False,
                workers=[workers[i % len(workers)]] if workers else None,
                allow_other_workers=True,
            )
            for i, call in enumerate(calls)
        ]
        results: list[ShardResult] = client.gather(futures)
        return results

    return run


# ---------------------------------------------------------------- one batch, sharded


@dataclass(frozen=True)
class ShardedStep:
    """One batch scored and learned in shards: the merged model and its lineage."""

    scores: Scores | None  # every row of the batch, by the model before the batch
    learned: ModelState
    parent_sha256: str  # the starting model every shard learned from
    sha256: str  # the merged model
    shards: list[ShardRecord] = field(default_factory=list)


def sharded_step(
    state: ModelState,
    features: pl.DataFrame,
    target: str | None,
    shards: int,
    run: ShardMap = sequential_map,
) -> ShardedStep:
    """`features` scored by `state`, then learned by `shards` workers and merged; `state` is
    left as it was. The encoder folds in the whole batch here, once, before the shards are
    cut: every worker encodes with the same statistics a single process would, so the
    scores and the merged encoder equal single-process learning exactly."""
    start = copy.deepcopy(state)
    start.encoder.update(features)
    bounds = shard_bounds(features.height, shards)
    results = run([(start, features.slice(a, b - a), target) for a, b in bounds])
    merged = merge_models(start, [(r.model, r.rows) for r in results if r.rows > 0] or [(start, 0)])
    return ShardedStep(
        scores=concat_scores([r.scores for r in results]),
        learned=merged,
        parent_sha256=parameters_sha256(start),
        sha256=parameters_sha256(merged),
        shards=[
            ShardRecord(
                index=i,
                first_row=a,
                last_row=b,
                rows_learned=r.rows,
                sha256=r.sha256,
                cpu_seconds=r.cpu_seconds,
            )
            for i, ((a, b), r) in enumerate(zip(bounds, results, strict=True))
        ],
    )


def sharded_learner(shards: int, run: ShardMap = sequential_map) -> Learner:
    """A `tasks.online.Learner` that learns each batch in `shards` shards through `run`
    and merges them (`sharded_step`). With `sequential_map` it gives bit for bit the model
    `dask_map` gives: what `replay-model` rebuilds a sharded version with."""

    def learner(state: ModelState, features: pl.DataFrame, target: str | None) -> Learned:
        step = sharded_step(state, features, target, shards, run)
        return Learned(step.scores, step.learned, step.shards)

    return learner


def concat_scores(parts: Sequence[Scores | None]) -> Scores | None:
    """The shards' scores as one, in order; None when the model had learned nothing."""
    present = [p for p in parts if p is not None]
    if not present or len(present) != len(parts):
        return None
    proba = [p.proba for p in present if p.proba is not None]
    return Scores(
        predictions=np.concatenate([p.predictions for p in present]),
        scores=np.concatenate([p.scores for p in present]),
        proba=np.concatenate(proba) if len(proba) == len(present) else None,
        labels=present[0].labels,
    )


# ---------------------------------------------------------------- merging


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
