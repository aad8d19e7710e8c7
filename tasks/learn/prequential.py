"""One candidate, one batch: score first, then learn (the prequential step), and the
batch size that follows the load.

Pure: frames and models in, a new model out. The same step serves live batches,
backfill retraining and `replay-model`, which is what lets a replay reproduce a
version bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from tidemill.tasks.learn.metrics import prequential_metrics, row_errors
from tidemill.tasks.learn.state import ModelState, Scores, learn, predict


@dataclass(frozen=True)
class ShardRecord:
    """Lineage of one shard of a merged model version."""

    index: int
    first_row: int  # position in the batch, inclusive
    last_row: int  # exclusive
    rows_learned: int
    sha256: str  # the shard model's parameters_sha256
    cpu_seconds: float  # what the shard cost its worker


@dataclass(frozen=True)
class Step:
    """What one candidate did with one batch."""

    scores: Scores | None  # before learning; None while the model had learned nothing
    metrics: dict[str, float]
    n_scored: int
    learned: ModelState  # encoder, detectors and estimator after the batch
    rows_learned: int
    drift_at: list[int] = field(default_factory=list)  # positions in the scored rows
    drift_error: float = 0.0  # mean error of the scored rows from the first drift on
    shift: list[dict[str, float]] = field(default_factory=list)  # PSI per completed window
    shards: list[ShardRecord] = field(default_factory=list)  # empty: learned in one piece


def labelled_rows(features: pl.DataFrame, task: str, target: str | None) -> np.ndarray:
    """Mask of the rows a model learns: labelled ones, or all of them when clustering."""
    if task == "clustering" or target is None:
        return np.ones(features.height, dtype=bool)
    return features[target].is_not_null().to_numpy()


@dataclass(frozen=True)
class Learned:
    """A batch scored, then learned, by one learner (see `Learner`)."""

    scores: Scores | None  # every row, by the model before the batch
    model: ModelState  # encoder updated with the batch, estimator after learning it
    shards: list[ShardRecord] = field(default_factory=list)  # empty: learned in one piece


Learner = Callable[[ModelState, pl.DataFrame, str | None], Learned]
"""Scores a batch with a model, then learns it, leaving the model as it was: `learn_here`
in this process, or `tasks.learn.shards.sharded_learner` on a cluster."""


def labels(
    features: pl.DataFrame, task: str, target: str | None, labelled: np.ndarray
) -> np.ndarray:
    """The targets of the `labelled` rows (zeros when clustering)."""
    if target is not None and task != "clustering":
        return features[target].to_numpy()[labelled]
    return np.zeros(int(labelled.sum()))


def learn_here(state: ModelState, features: pl.DataFrame, target: str | None) -> Learned:
    """The encoder folds in the batch's feature statistics (no labels), every row is
    scored, then the model learns the labelled rows, in this process."""
    current = copy.deepcopy(state)
    current.encoder.update(features)
    x = current.encoder.transform(features)
    labelled = labelled_rows(features, state.task, target)
    scores = predict(current, x)
    y = labels(features, state.task, target, labelled)
    learned = learn(current, x[labelled], y, in_place=True) if labelled.any() else current
    return Learned(scores, learned)


def prequential_step(
    state: ModelState,
    features: pl.DataFrame,
    target: str | None,
    learner: Learner = learn_here,
) -> Step:
    """Score `features` with `state`, then learn them; `state` itself is left as it was.

    `learner` scores and learns (in this process by default); the labelled rows' scores
    give the metrics and feed the drift detector, and the features the shift monitor."""
    done = learner(state, features, target)
    current, scores = done.model, done.scores
    labelled = labelled_rows(features, state.task, target)
    y = labels(features, state.task, target, labelled)
    metrics: dict[str, float] = {}
    drift_at: list[int] = []
    drift_error = 0.0
    if scores is not None and y.size:
        scored = scores.subset(labelled)
        metrics = prequential_metrics(state.task, scored, y)
        errors = row_errors(state.task, scored, y)
        if current.detector is not None:
            drift_at = current.detector.update(errors)
            if drift_at:
                drift_error = float(errors[drift_at[0] :].mean())
    shift = (
        current.shift.update(
            {n: features[n].cast(pl.Float64).to_numpy() for n in current.shift.features}
        )
        if current.shift is not None
        else []
    )
    return Step(
        scores=scores,
        metrics=metrics,
        n_scored=int(y.size) if scores is not None else 0,
        learned=current,
        rows_learned=int(labelled.sum()),
        drift_at=drift_at,
        drift_error=drift_error,
        shift=shift,
        shards=done.shards,
    )
