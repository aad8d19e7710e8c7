"""A manual backfill of one event-time window: THE code path for the CLI and the flow.

Re-reads the source for records with event time in [start, end), inserts only those
not already stored (same key, or same content when there is no key; records still in
the inbox or already quarantined are left to their owners), recomputes every aggregate
window it adds to from the clean rows, and with `retrain` trains a candidate model on
the window without touching the champion. Chunks commit one transaction each and take
the runtime lock only for their own duration, so live micro-batches run in between. A
second run of the same window inserts nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import polars as pl
from polars.exceptions import PanicException

from tidemill import utc
from tidemill.errors import TidemillError
from tidemill.flows.engine.features import batch_partials, clean_batch, model_inputs, target_of
from tidemill.flows.engine.ingest import stored_form
from tidemill.flows.engine.models import PipelineState
from tidemill.flows.engine.runtime import Runtime
from tidemill.tasks.features.aggregate import (
    previous_window_keys,
    window_start,
)
from tidemill.tasks.features.lags import lag_history
from tidemill.tasks.learn.fresh import fresh_model
from tidemill.tasks.learn.prequential import prequential_step
from tidemill.tasks.learn.state import parameters_sha256
from tidemill.tasks.records.validate import RecordSchema, content_hashes, validate_records
from tidemill.tasks.sources.loader import source_for
from tidemill.warehouse import artifacts, registry
from tidemill.warehouse.connection import Connection
from tidemill.warehouse.ledger import backfills, erasures
from tidemill.warehouse.ledger.batches import BatchRecord, next_batch_id, window_stats
from tidemill.warehouse.ledger.batches import lag_history as stored_lag_history

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BackfillReport:
    """What a backfill did."""

    backfill_id: int
    pipeline: str
    rows_in_window: int
    rows_inserted: int
    rows_present: int
    rows_quarantined: int
    windows_recomputed: int
    candidate_version: int | None = None
    candidate_metrics: dict[str, float] = field(default_factory=dict)


class BackfillError(TidemillError, RuntimeError):
    """A backfill that cannot run; the message says why."""


def source_records(
    runtime: Runtime, state: PipelineState, start: datetime, end: datetime
) -> pl.DataFrame:
    """Every record of the source with event time in [start, end), with `_file`, as it
    may be stored (personal fields protected, erased subjects left out, as the live
    ingest does), in event-time order."""
    config = state.config
    source = source_for(config, runtime.state_dir)
    with runtime.writing() as con:
        erased = erasures.erased_digests(con, config.name)
    frames = [
        stored_form(config, runtime.state_dir, source, arrived, erased)[0]
        for arrived in source.read_window(start, end)
    ]
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="vertical_relaxed").sort("_event_at", "_file", "_line")


def _recompute(
    con: Connection, state: PipelineState, new_clean: pl.DataFrame
) -> dict[str, tuple[pl.DataFrame, pl.DataFrame]]:
    """Per aggregate: the windows `new_clean` adds to, and their stats recomputed from
    the stored clean rows of those windows plus `new_clean`."""
    config = state.config
    out = {}
    for spec in config.aggregates:
        keyed = new_clean.with_columns(window_start(config.event_time, spec).alias("window_start"))
        windows = keyed.select("window_start", *spec.by).unique()
        if windows.height == 0:
            out[spec.name] = (windows, windows)
            continue
        first = windows["window_start"].min()
        last = windows["window_start"].max() + timedelta(seconds=spec.every_seconds)  # type: ignore[operator]
        stored = backfills.clean_rows_between(con, config.name, config.event_time, first, last)  # type: ignore[arg-type]
        rows = pl.concat([stored.select(new_clean.columns), new_clean], how="vertical_relaxed")
        stats = batch_partials(config, rows, spec).join(
            windows, on=["window_start", *spec.by], how="semi", nulls_equal=True
        )
        out[spec.name] = (windows, stats)
    return out


def _insert_chunk(
    con: Connection, state: PipelineState, backfill_id: int, chunk: pl.DataFrame
) -> None:
    config = state.config
    started = utc.now()
    validated = validate_records(chunk, RecordSchema.of(config), utc.now())
    accepted = validated.accepted
    identity = (
        accepted[config.key] if config.key else content_hashes(accepted, config.source_columns)
    )
    stored = backfills.stored_identities(con, config, identity)
    fresh = ~identity.is_in(stored.implode())
    new = accepted.filter(fresh)
    clean = clean_batch(config, new)
    recompute = _recompute(con, state, clean)
    ts = clean[config.event_time]
    record = BatchRecord(
        batch_id=next_batch_id(con),
        pipeline=config.name,
        status="backfill",
        window_start_at=ts.min() if clean.height else None,  # type: ignore[arg-type]
        window_end_at=ts.max() if clean.height else None,  # type: ignore[arg-type]
        rows_in=chunk.height,
        rows_accepted=new.height,
        rows_quarantined=validated.rejected.height,
        rows_learned=0,
        model_version=state.version,
        started_at=started,
        finished_at=utc.now(),
    )
    raw = new.select([*config.source_columns, "_file", "_line"]).with_columns(
        content_hashes(new, config.source_columns)
    )
    backfills.commit_chunk(
        con,
        config,
        backfill_id,
        backfills.ChunkWrite(
            lags=_lag_histories(con, state, clean),
            record=record,
            raw=raw,
            clean=clean,
            quarantine=validated.rejected.select("_file", "_line", "_raw", "reason"),
            present=int((~fresh).sum()),
        ),
        recompute,
    )


def _lag_histories(
    con: Connection, state: PipelineState, new_clean: pl.DataFrame
) -> dict[str, pl.DataFrame]:
    """Per lag: the stored history of the series `new_clean` touches, with its labels in."""
    config = state.config
    valued = new_clean.with_columns(target_of(config).alias("_value"))
    return {
        lag.name: lag_history(
            stored_lag_history(con, config, lag, new_clean.select(lag.by)),
            valued,
            event_time=config.event_time,
            by=lag.by,
            n=lag.n,
        )
        for lag in config.lags
    }


def _train_candidate(
    runtime: Runtime, state: PipelineState, start: datetime, end: datetime
) -> tuple[registry.ModelVersion, dict[str, float]] | None:
    """A fresh model learned prequentially on the window's clean rows, registered as a
    candidate of model.name's lineage; None when the window has no labelled row."""
    config = state.config
    with runtime.writing() as con:
        rows = backfills.clean_rows_between(con, config.name, config.event_time, start, end)
    model = fresh_model(config)
    totals: dict[str, float] = {}
    scored = 0
    for chunk in rows.iter_slices(config.batch_rows):
        with runtime.writing() as con:
            windows = {
                spec.name: window_stats(
                    con,
                    config,
                    spec,
                    previous_window_keys(chunk, spec, event_time=config.event_time),
                )
                for spec in config.aggregates
            }
            histories = {
                lag.name: stored_lag_history(con, config, lag, chunk.select(lag.by))
                for lag in config.lags
            }
        features, _ = model_inputs(config, chunk, windows, histories)
        step = prequential_step(model, features, config.target)
        for name, value in step.metrics.items():
            totals[name] = totals.get(name, 0.0) + value * step.n_scored
        scored += step.n_scored
        model = step.learned
    if not model.fitted:
        return None
    metrics = {name: total / scored for name, total in totals.items()} if scored else {}
    with runtime.writing() as con:
        row = artifacts.write_version(
            con,
            runtime.state_dir,
            config.name,
            model,
            estimator=config.model.estimator,
            params=config.model.params,
            parent_version=None,
            batch_id=next_batch_id(con) - 1,
            status="candidate",
            metrics=metrics,
            created_at=utc.now(),
            candidate=config.model.name,
            params_sha256=parameters_sha256(model),
        )
        registry.record(con, row)
    return row, metrics


def run_backfill(
    runtime: Runtime,
    name: str,
    start: datetime,
    end: datetime,
    *,
    retrain: bool = False,
    requested_by: str,
    progress: Progress | None = None,
    chunk_rows: int = 2000,
) -> BackfillReport:
    """Backfill [start, end) of pipeline `name` (see module docstring)."""
    if start >= end:
        raise BackfillError(
            f"--start {start:%Y-%m-%d %H:%M} must be before --end {end:%Y-%m-%d %H:%M}"
        )
    state = runtime.pipeline(name)
    if state is None:
        source = source_for(runtime.config.pipeline(name), runtime.state_dir)
        raise BackfillError(f"{name} has no data yet: nothing has landed in {source.label}")
    with runtime.writing() as con:
        backfill_id = backfills.begin(con, name, start, end, retrain, requested_by)
    try:
        records = source_records(runtime, state, start, end)
        total = records.height
        if total:
            with runtime.writing() as con:
                elsewhere = backfills.waiting_or_quarantined(con, name)
                backfills.set_total(con, backfill_id, total)
            records = records.join(elsewhere, on=["_file", "_line"], how="anti")
            skipped = total - records.height
            if skipped:
                with runtime.writing() as con:
                    backfills.count_present(con, backfill_id, skipped)
            if progress:
                progress(skipped, total)
            done = skipped
            for chunk in records.iter_slices(chunk_rows):
                with runtime.writing() as con:
                    _insert_chunk(con, state, backfill_id, chunk)
                done += chunk.height
                if progress:
                    progress(done, total)
        candidate = _train_candidate(runtime, state, start, end) if retrain else None
        with runtime.writing() as con:
            backfills.finish(
                con,
                backfill_id,
                "done",
                candidate_version=candidate[0].version if candidate else None,
            )
            row = backfills.get(con, backfill_id)
            runtime.publication.changed()
    except (Exception, PanicException) as error:
        with runtime.writing() as con:
            backfills.finish(con, backfill_id, "failed", error=f"{type(error).__name__}: {error}")
        raise
    return BackfillReport(
        backfill_id=backfill_id,
        pipeline=name,
        rows_in_window=row.rows_in_window,
        rows_inserted=row.rows_inserted,
        rows_present=row.rows_present,
        rows_quarantined=row.rows_quarantined,
        windows_recomputed=row.windows_recomputed,
        candidate_version=candidate[0].version if candidate else None,
        candidate_metrics=candidate[1] if candidate else {},
    )
