"""Data-parallel incremental learning: one batch split into contiguous shards, each shard
scored and learned by its own worker from the same starting model, the shard models merged
(merge.py) into one model version that records where its parts came from.

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
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from tidemill.tasks.learn.merge import merge_models
from tidemill.tasks.learn.prequential import Learned, Learner, ShardRecord, labelled_rows
from tidemill.tasks.learn.state import ModelState, Scores, learn, parameters_sha256, predict

if TYPE_CHECKING:
    from distributed import Client

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
    """A `tasks.learn.prequential.Learner` that learns each batch in `shards` shards through `run`
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
