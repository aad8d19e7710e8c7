import numpy as np
import polars as pl

from tidemill.tasks.drift.detectors import Adwin
from tidemill.tasks.features.encode import FeatureEncoder
from tidemill.tasks.judge.batch_size import next_batch_rows
from tidemill.tasks.learn.estimators import make_estimator
from tidemill.tasks.learn.prequential import prequential_step
from tidemill.tasks.learn.state import ModelState


def _state() -> ModelState:
    return ModelState(
        estimator=make_estimator("sgd_classifier", {"loss": "log_loss"}, "classification"),
        encoder=FeatureEncoder(numeric=["x"], categorical=[], max_categories=1),
        task="classification",
        classes=["0", "1"],
        detector=Adwin(),
    )


def test_adaptive_batch_halves_when_slow_doubles_with_headroom_and_backlog_and_stays_bounded() -> (
    None
):
    size = {"every_seconds": 5.0, "min_rows": 50, "max_rows": 1000, "target_fraction": 0.5}
    assert next_batch_rows(400, seconds=3.0, backlog=10_000, **size) == 200  # over 2.5 s
    assert next_batch_rows(400, seconds=0.5, backlog=10_000, **size) == 800  # under 0.625 s
    assert next_batch_rows(400, seconds=0.5, backlog=100, **size) == 400  # nothing waits
    assert next_batch_rows(400, seconds=1.0, backlog=10_000, **size) == 400  # in between
    assert next_batch_rows(800, seconds=0.1, backlog=10_000, **size) == 1000  # the ceiling
    assert next_batch_rows(60, seconds=9.0, backlog=0, **size) == 50  # the floor


def test_a_step_scores_before_it_learns_and_leaves_its_input_alone() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    frame = pl.DataFrame({"x": x, "y": np.where(x > 0, "1", "0")})
    frame = frame.with_columns(
        pl.when(pl.int_range(200) % 10 == 0).then(None).otherwise(pl.col("y")).alias("y")
    )
    state = _state()
    first = prequential_step(state, frame, "y")
    assert first.scores is None and first.metrics == {} and first.n_scored == 0
    assert first.rows_learned == 180 and first.learned.rows_seen == 180  # unlabelled: not learned
    assert state.rows_seen == 0 and state.encoder.moments["x"].count == 0  # untouched
    second = prequential_step(first.learned, frame, "y")
    assert second.n_scored == 180 and second.metrics["accuracy"] > 0.9
    assert second.scores is not None and second.scores.predictions.shape == (200,)  # all scored
    assert second.learned.detector is not None and second.learned.detector.width == 180
