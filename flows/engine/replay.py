"""Deterministic replay: rebuild a model version from the raw rows of its batches and
prove it equal to the stored one.

A version is its parent plus one batch, so a version is its lineage: a fresh model of
its candidate's spec, then every batch of the chain root..version learned in order,
each with the features it read at the time (windows and lags rebuilt from clean.P as
they stood before the batch). The same `batch_features` and `prequential_step` as the
live cycle do the work; equality is checked on `parameters_sha256`, the digest of what
the model learned. This is also what erasure rebuilds a model with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from tidemill.config.pipeline import PipelineConfig
from tidemill.errors import TidemillError
from tidemill.flows.engine.features import model_inputs, target_of
from tidemill.tasks.features.aggregate import (
    merge_window_stats,
    previous_window_keys,
    window_partials,
)
from tidemill.tasks.features.clean import in_batch_order
from tidemill.tasks.learn.fresh import fresh_model
from tidemill.tasks.learn.prequential import Step, learn_here, prequential_step
from tidemill.tasks.learn.shards import sharded_learner
from tidemill.tasks.learn.state import ModelState, parameters_sha256
from tidemill.warehouse import artifacts, registry
from tidemill.warehouse.connection import Connection
from tidemill.warehouse.ledger import history

Progress = Callable[[int, int], None]


class ReplayError(TidemillError, RuntimeError):
    """A version that cannot be replayed; the message says why."""


@dataclass(frozen=True)
class ReplayReport:
    """What a replay rebuilt and whether it matched."""

    pipeline: str
    version: int
    candidate: str
    batches: int
    rows_learned: int
    stored_sha256: str  # ml.model_versions.params_sha256
    rebuilt_sha256: str
    artifact_sha256: str | None  # digest of the artifact file's model; None once pruned
    equal: bool  # rebuilt == stored (== artifact, while the file is kept)


def lineage(con: Connection, pipeline: str, version: int) -> list[registry.ModelVersion]:
    """The chain of versions root..version, following parents."""
    chain = []
    current = registry.get_version(con, pipeline, version)
    if current is None:
        raise ReplayError(f"{pipeline} has no version {version}")
    while current is not None:
        chain.append(current)
        parent = current.parent_version
        current = registry.get_version(con, pipeline, parent) if parent is not None else None
    return chain[::-1]


def _windows(
    con: Connection, config: PipelineConfig, clean: pl.DataFrame, batch_id: int
) -> dict[str, pl.DataFrame]:
    """Per aggregate: the windows the batch read, as the live cycle saw them: the stored
    sums (each earlier batch's partials added in batch order, as the upserts did), then
    the batch's own partials."""
    out = {}
    at, value = config.event_time, target_of(config)
    for spec in config.aggregates:
        wanted = previous_window_keys(clean, spec, event_time=at)
        rows = history.window_rows_before(con, config, spec, wanted, batch_id)
        stored = window_partials(clean.clear(), spec, event_time=at, value=value)
        for _, part in sorted(rows.group_by("batch_id"), key=lambda group: int(group[0][0])):  # type: ignore[call-overload]
            earlier = in_batch_order(part.drop("batch_id"), event_time=at, key=config.key)
            partial = window_partials(earlier, spec, event_time=at, value=value)
            stored = merge_window_stats(stored, partial, spec)
        own = window_partials(clean, spec, event_time=at, value=value)
        out[spec.name] = merge_window_stats(stored, own, spec)
    return out


def _histories(
    con: Connection, config: PipelineConfig, clean: pl.DataFrame, batch_id: int
) -> dict[str, pl.DataFrame]:
    """Per lag: the latest labels per series before the batch, in the stored shape."""
    out = {}
    for lag in config.lags:
        rows = history.lag_rows_before(con, config, lag, clean.select(lag.by), batch_id)
        out[lag.name] = rows.select(
            *lag.by,
            pl.col(config.event_time).alias("event_at"),
            target_of(config).alias("value"),
        )
    return out


def relearn(
    con: Connection,
    config: PipelineConfig,
    model: ModelState,
    versions: list[registry.ModelVersion],
) -> Iterator[tuple[registry.ModelVersion, Step]]:
    """Learn the batches of `versions` again, in order, starting from `model`: per version,
    its step on the batch's clean rows as they are now, with the windows and lags the
    batch read. A step that learned nothing (its rows are gone) leaves the model as it was,
    like a live batch without labels."""
    shards = registry.shard_counts(con, config.name, [v.version for v in versions])
    for version in versions:
        clean = in_batch_order(
            history.batch_clean_rows(con, config, version.batch_id),
            event_time=config.event_time,
            key=config.key,
        )
        features, _ = model_inputs(
            config,
            clean,
            _windows(con, config, clean, version.batch_id),
            _histories(con, config, clean, version.batch_id),
        )
        # a version learned in shards is rebuilt in as many (here, one after the other)
        learner = (
            sharded_learner(shards[version.version]) if version.version in shards else learn_here
        )
        step = prequential_step(model, features, config.target, learner)
        if step.rows_learned:
            model = step.learned
        yield version, step


def fresh_candidate(config: PipelineConfig, root: registry.ModelVersion) -> ModelState:
    """A fresh model of the candidate `root` belongs to (its spec must still be declared)."""
    specs = {spec.name: spec for spec in config.candidates}
    if root.candidate not in specs:
        raise ReplayError(
            f"{config.name} v{root.version}: candidate '{root.candidate}' is not in "
            "the config any more; rebuilding needs its estimator spec"
        )
    return fresh_model(config, specs[root.candidate])


def replay_version(
    con: Connection,
    config: PipelineConfig,
    chain: list[registry.ModelVersion],
    progress: Progress | None = None,
) -> tuple[ModelState, int]:
    """The model rebuilt along `chain`, and the rows it learned."""
    model = fresh_candidate(config, chain[0])
    rows_learned = 0
    for done, (_, step) in enumerate(relearn(con, config, model, chain), start=1):
        if step.rows_learned:
            model = step.learned
        rows_learned += step.rows_learned
        if progress:
            progress(done, len(chain))
    return model, rows_learned


def replay_model(
    con: Connection,
    config: PipelineConfig,
    version: int,
    state_dir: Path,
    progress: Progress | None = None,
) -> ReplayReport:
    """Rebuild `version` of `config`'s pipeline and compare it with the registry row and
    with the model in its artifact file (hash-checked before it is loaded)."""
    chain = lineage(con, config.name, version)
    target = chain[-1]
    root = chain[0]
    if root.batches_seen != 1 or root.rows_seen != history.batch_rows_learned(
        con, config, root.batch_id
    ):
        raise ReplayError(
            f"{config.name} v{version} descends from v{root.version}, which was not learned from "
            f"one micro-batch (a backfill candidate?); replay covers batch lineages only"
        )
    if target.params_sha256 is None:
        raise ReplayError(f"{config.name} v{version} was written before parameter digests existed")
    model, rows_learned = replay_version(con, config, chain, progress)
    rebuilt = parameters_sha256(model)
    artifact = (
        parameters_sha256(artifacts.load_artifact(state_dir, target))
        if target.artifact_pruned_at is None
        else None
    )
    return ReplayReport(
        pipeline=config.name,
        version=version,
        candidate=target.candidate,
        batches=len(chain),
        rows_learned=rows_learned,
        stored_sha256=target.params_sha256,
        rebuilt_sha256=rebuilt,
        artifact_sha256=artifact,
        equal=rebuilt == target.params_sha256 and artifact in (None, rebuilt),
    )
