"""Data-parallel learning: shards learned from one start and merged give one model version.

Real estimators on small seeded data; one test starts a 2-worker Dask LocalCluster."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tidemill.tasks.features.encode import FeatureEncoder
from tidemill.tasks.learn.estimators import make_estimator
from tidemill.tasks.learn.merge import UnmergeableModel, merge_encoders, merge_models
from tidemill.tasks.learn.prequential import prequential_step
from tidemill.tasks.learn.shards import (
    HEAVY_ESTIMATORS,
    MIN_SHARD_ROWS,
    dask_map,
    sequential_map,
    shard_bounds,
    sharded_step,
    should_distribute,
    split_batch,
)
from tidemill.tasks.learn.state import ModelState, learn, parameters_sha256


def _state(name: str, params: dict[str, object] | None = None, task: str = "classification"):
    return ModelState(
        estimator=make_estimator(name, params or {}, task),
        encoder=FeatureEncoder(numeric=["a", "b", "c"], categorical=[], max_categories=1),
        task=task,
        classes=["0", "1", "2"] if task == "classification" else None,
    )


def _batch(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)) * [1.0, 3.0, 0.5] + [0.0, 2.0, -1.0]
    y = np.digitize(x[:, 0] - 0.3 * x[:, 1] + rng.normal(scale=0.5, size=rows), [-1.0, 0.0])
    return x, y.astype(str)


def _learned_in_shards(start: ModelState, x: np.ndarray, y: np.ndarray, shards: int):
    parts = [(learn(start, xs, ys), xs.shape[0]) for xs, ys in split_batch(x, y, shards)]
    return merge_models(start, parts), parts


def test_shards_are_contiguous_in_order_balanced_and_never_empty() -> None:
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_bounds(2, 4) == [(0, 1), (1, 2)]
    assert shard_bounds(0, 4) == []
    x, y = np.arange(14).reshape(7, 2), np.arange(7)
    parts = split_batch(x, y, 2)
    assert [p[1].tolist() for p in parts] == [[0, 1, 2], [3, 4, 5, 6]]
    assert np.array_equal(np.vstack([p[0] for p in parts]), x)
    with pytest.raises(ValueError, match="at least 1"):
        shard_bounds(5, 0)


@pytest.mark.parametrize("name", ["sgd_classifier", "gaussian_nb", "mlp_classifier"])
def test_merging_one_shard_gives_that_shards_model(name: str) -> None:
    start = learn(_state(name), *_batch(200, 0))
    shard = learn(start, *_batch(150, 1))
    merged = merge_models(start, [(shard, 150)])
    assert parameters_sha256(merged) == parameters_sha256(shard)
    assert (merged.rows_seen, merged.batches_seen) == (350, 2)


@pytest.mark.parametrize("name", ["gaussian_nb", "bernoulli_nb", "multinomial_nb"])
@pytest.mark.parametrize("fitted", [False, True], ids=["unfitted-start", "fitted-start"])
def test_naive_bayes_merged_from_shards_equals_one_model_on_all_rows(
    name: str, fitted: bool
) -> None:
    start = learn(_state(name), *_batch(300, 0)) if fitted else _state(name)
    x, y = _batch(1_000, 1)
    merged, _ = _learned_in_shards(start, x, y, 3)
    whole = learn(start, x, y)
    for attr in ("class_count_", "feature_count_", "theta_", "var_", "epsilon_", "class_prior_"):
        if hasattr(whole.estimator, attr):
            expected = getattr(whole.estimator, attr)
            assert np.allclose(getattr(merged.estimator, attr), expected, rtol=1e-10, atol=0)
    assert np.allclose(
        merged.estimator.predict_proba(_model_x(name, x)),
        whole.estimator.predict_proba(_model_x(name, x)),
        rtol=1e-8,
    )
    assert merged.rows_seen == whole.rows_seen and merged.batches_seen == whole.batches_seen


def _model_x(name: str, x: np.ndarray) -> np.ndarray:
    return np.hstack([np.maximum(x, 0), np.maximum(-x, 0)]) if name == "multinomial_nb" else x


def test_sgd_coefficients_are_the_row_weighted_mean_and_updates_add_up() -> None:
    start = learn(_state("sgd_classifier", {"loss": "log_loss"}), *_batch(200, 0))
    x, y = _batch(1_000, 1)
    uneven = [(0, 700), (700, 900), (900, 1_000)]
    parts = [(learn(start, x[a:b], y[a:b]), b - a) for a, b in uneven]
    merged = merge_models(start, parts)
    for attr in ("coef_", "intercept_"):
        expected = sum(getattr(m.estimator, attr) * rows for m, rows in parts) / 1_000
        assert np.allclose(getattr(merged.estimator, attr), expected, rtol=1e-12)
    assert merged.estimator.t_ == start.estimator.t_ + 1_000  # as if one worker saw them all
    assert merged.rows_seen == 1_200 and merged.batches_seen == 2


def test_mlp_weights_and_adam_moments_are_averaged_and_its_steps_add_up() -> None:
    start = learn(_state("mlp_classifier"), *_batch(400, 0))
    x, y = _batch(800, 1)
    merged, parts = _learned_in_shards(start, x, y, 2)
    for layer in range(2):
        expected = (parts[0][0].estimator.coefs_[layer] + parts[1][0].estimator.coefs_[layer]) / 2
        assert np.allclose(merged.estimator.coefs_[layer], expected, rtol=1e-12)
    adam = [p.estimator._optimizer.t - start.estimator._optimizer.t for p, _ in parts]
    assert merged.estimator._optimizer.t == start.estimator._optimizer.t + sum(adam)
    assert merged.estimator.predict(x).shape == (800,)


def test_minibatch_kmeans_from_a_fitted_start_merges_to_the_one_process_centres() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[-4.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    x = centres[rng.integers(0, 3, 1_200)] + rng.normal(scale=0.3, size=(1_200, 3))
    params = {"n_clusters": 3, "reassignment_ratio": 0.0}
    start = learn(_state("minibatch_kmeans", params, "clustering"), x[:300], np.zeros(300))
    merged, _ = _learned_in_shards(start, x[300:], np.zeros(900), 3)
    whole = learn(start, x[300:], np.zeros(900))
    # one partial_fit assigns every row to the start centres, then moves them: exact
    assert np.allclose(merged.estimator.cluster_centers_, whole.estimator.cluster_centers_)
    assert np.allclose(merged.estimator._counts, whole.estimator._counts)


def test_encoder_moments_and_vocabulary_merged_from_shards_equal_the_whole_batch() -> None:
    rng = np.random.default_rng(3)

    def frame(rows: int, cities: list[str]) -> pl.DataFrame:
        values = rng.normal(50.0, 10.0, rows)
        values[::7] = np.nan  # missing values are not counted
        return pl.DataFrame({"v": values, "city": rng.choice(cities, rows)})

    start = FeatureEncoder(numeric=["v"], categorical=["city"], max_categories=5)
    start.update(frame(500, ["a", "b"]))
    batch = frame(3_000, ["a", "b", "c", "d", "e", "f", "g", "h"])
    shards = []
    for a, b in shard_bounds(batch.height, 3):
        encoder = merge_encoders(start, [])  # a copy of the start
        encoder.update(batch.slice(a, b - a))
        shards.append(encoder)
    whole = merge_encoders(start, [])
    whole.update(batch)
    merged = merge_encoders(start, shards)
    got, want = merged.moments["v"], whole.moments["v"]
    assert got.count == want.count
    assert got.mean == pytest.approx(want.mean, rel=1e-13)
    assert got.m2 == pytest.approx(want.m2, rel=1e-12)
    assert merged.vocab == whole.vocab and len(merged.vocab["city"]) == 5
    assert start.moments["v"].count == 500 - 500 // 7 - 1  # the start is left as it was


def test_a_sharded_step_scores_like_one_process_and_keeps_its_encoder_exact() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2_000, 2))
    frame = pl.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": np.where(x[:, 0] > x[:, 1], "1", "0")})
    state = ModelState(
        estimator=make_estimator("gaussian_nb", {}, "classification"),
        encoder=FeatureEncoder(numeric=["a", "b"], categorical=[], max_categories=1),
        task="classification",
        classes=["0", "1"],
    )
    state = prequential_step(state, frame.head(500), "y").learned
    batch = frame.slice(500)
    single = prequential_step(state, batch, "y")
    step = sharded_step(state, batch, "y", 3)
    assert step.scores is not None and single.scores is not None
    assert np.array_equal(step.scores.predictions, single.scores.predictions)
    assert step.learned.encoder == single.learned.encoder  # folded in once, bit for bit
    assert np.allclose(step.learned.estimator.theta_, single.learned.estimator.theta_)
    assert step.parent_sha256 != step.sha256 == parameters_sha256(step.learned)
    assert [(s.first_row, s.last_row, s.rows_learned) for s in step.shards] == [
        (0, 500, 500),
        (500, 1000, 500),
        (1000, 1500, 500),
    ]


def test_estimators_that_cannot_be_merged_say_so() -> None:
    start = ModelState(
        estimator=make_estimator("sklearn.naive_bayes.CategoricalNB", {}, "classification"),
        encoder=FeatureEncoder(numeric=["a"], categorical=[], max_categories=1),
        task="classification",
        classes=["0", "1"],
    )
    x, y = np.array([[0.0], [1.0], [1.0]]), np.array(["0", "1", "1"])
    shards = [(learn(start, x, y), 3), (learn(start, x, y), 3)]
    with pytest.raises(UnmergeableModel, match=r"cannot merge shards of CategoricalNB.*GaussianNB"):
        merge_models(start, shards)
    unseeded = _state("mlp_classifier", {"random_state": None})
    parts = [(learn(unseeded, xs, ys), 50) for xs, ys in split_batch(*_batch(100, 0), 2)]
    with pytest.raises(UnmergeableModel, match="fixed random_state"):
        merge_models(unseeded, parts)
    other = learn(_state("bernoulli_nb"), *_batch(10, 0))
    with pytest.raises(UnmergeableModel, match="same start"):
        merge_models(_state("gaussian_nb"), [(other, 10), (other, 10)])


def test_should_distribute_follows_the_measured_thresholds() -> None:
    assert {"mlp_classifier"} == HEAVY_ESTIMATORS
    assert MIN_SHARD_ROWS == 50_000
    assert should_distribute("mlp_classifier", 100_000, 2)  # 50,000 rows a shard
    assert not should_distribute("mlp_classifier", 99_999, 2)
    assert not should_distribute("mlp_classifier", 100_000, 4)  # 25,000 a shard
    assert not should_distribute("mlp_classifier", 1_000_000, 1)
    for batch, workers in [(500, 2), (5_000, 2), (50_000, 2), (50_000, 4)]:  # all measured: no
        assert not should_distribute("mlp_classifier", batch, workers)
    for cheap in ("sgd_classifier", "gaussian_nb", "bernoulli_nb", "perceptron"):
        assert not should_distribute(cheap, 1_000_000, 2)


def test_shards_on_a_two_worker_dask_cluster_equal_the_same_shards_learned_in_turn() -> None:
    distributed = pytest.importorskip("distributed")
    rng = np.random.default_rng(9)
    x = rng.normal(size=(1_200, 2))
    frame = pl.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": np.where(x.sum(axis=1) > 0, "1", "0")})
    state = ModelState(
        estimator=make_estimator("sgd_classifier", {"loss": "log_loss"}, "classification"),
        encoder=FeatureEncoder(numeric=["a", "b"], categorical=[], max_categories=1),
        task="classification",
        classes=["0", "1"],
    )
    state = sharded_step(state, frame.head(200), "y", 2).learned
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        on_dask = sharded_step(state, frame.slice(200), "y", 2, dask_map(client))
    in_turn = sharded_step(state, frame.slice(200), "y", 2, sequential_map)
    assert on_dask.sha256 == in_turn.sha256
    lineage = [(s.first_row, s.last_row, s.rows_learned, s.sha256) for s in on_dask.shards]
    assert lineage == [(s.first_row, s.last_row, s.rows_learned, s.sha256) for s in in_turn.shards]
    assert len(lineage) == 2 and all(s.cpu_seconds > 0 for s in on_dask.shards)
    assert on_dask.learned.rows_seen == 1_200
