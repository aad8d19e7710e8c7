import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tidemill.tasks.features.encode import FeatureEncoder, RunningMoments


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=20), min_size=1, max_size=8))
def test_running_moments_match_numpy_over_any_batching(batches: list[list[float]]) -> None:
    moments = RunningMoments()
    for batch in batches:
        moments.merge(np.array(batch, dtype=np.float64))
    everything = np.array([v for b in batches for v in b])
    assert moments.count == everything.size
    if everything.size:
        assert np.isclose(moments.mean, everything.mean(), rtol=1e-9, atol=1e-6)
    if everything.size >= 2 and everything.std() > 1e-6:
        assert np.isclose(moments.std, everything.std(), rtol=1e-6)


def test_moments_stay_finite_on_a_long_stream_of_large_values() -> None:
    moments = RunningMoments()
    rng = np.random.default_rng(0)
    for _ in range(2000):
        moments.merge(1e12 + rng.normal(size=1000))
    assert moments.count == 2_000_000
    assert np.isfinite(moments.mean) and abs(moments.std - 1.0) < 0.01


def test_encoder_width_is_fixed_and_categories_beyond_the_cap_share_one_slot() -> None:
    encoder = FeatureEncoder(numeric=["x"], categorical=["c"], max_categories=2, cyclic={"h": 24})
    first = pl.DataFrame({"x": [1.0, 3.0], "c": ["a", "b"], "h": [0, 6]})
    later = pl.DataFrame({"x": [None], "c": ["z"], "h": [12]})
    encoder.update(first)
    encoder.update(later)
    assert encoder.feature_names == ["x", "h_sin", "h_cos", "c=0", "c=1", "c=other"]
    matrix = encoder.transform(pl.concat([first, later]))
    assert matrix.shape == (3, 6)
    np.testing.assert_allclose(matrix[:, 0], [-1.0, 1.0, 0.0])  # null imputed at the mean
    np.testing.assert_allclose(matrix[:, 3:], [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(matrix[1, 1:3], [1.0, 0.0], atol=1e-12)  # 06:00 on the circle


def test_hashed_categories_need_no_vocabulary_and_take_unseen_values() -> None:
    encoder = FeatureEncoder(numeric=[], categorical=["c"], max_categories=1, hash_buckets=16)
    frame = pl.DataFrame({"c": ["a", "b", None, "a"]})
    encoder.update(frame)
    x = encoder.transform(frame)
    assert x.shape == (4, 16) and encoder.vocab == {"c": {}}
    assert x.sum(axis=1).tolist() == [1.0, 1.0, 0.0, 1.0]  # a null sets no slot
    np.testing.assert_array_equal(x[0], x[3])
    unseen = encoder.transform(pl.DataFrame({"c": ["never seen"]}))
    assert unseen.sum() == 1.0
    again = FeatureEncoder(numeric=[], categorical=["c"], max_categories=1, hash_buckets=16)
    np.testing.assert_array_equal(again.transform(frame), x)  # stable across encoders
    assert encoder.feature_names[:2] == ["c#0", "c#1"]


def test_an_empty_batch_gives_an_empty_matrix_of_the_right_width() -> None:
    encoder = FeatureEncoder(numeric=["x"], categorical=["c"], max_categories=2, cyclic={"h": 24})
    empty = pl.DataFrame(
        {"x": [], "c": [], "h": []}, schema={"x": pl.Float64, "c": pl.Utf8, "h": pl.Int8}
    )
    encoder.update(empty)
    assert encoder.transform(empty).shape == (0, len(encoder.feature_names)) == (0, 6)
