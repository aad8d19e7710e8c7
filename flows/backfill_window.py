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

import glob
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import polars as pl
from polars.exceptions import PanicException

from tidemill.config import PostgresSource, RedisStreamSource
from tidemill.errors import TidemillError
from tidemill.flows.cycle import batch_features, drop_erased, pii_key, raw_format
from tidemill.flows.runtime import PipelineState, Runtime, fresh_model
from tidemill.tasks.features.aggregate import (
    previous_window_keys,
    target_value,
    window_partials,
    window_start,
)
from tidemill.tasks.features.clean import clean_rows
from tidemill.tasks.features.lags import lag_history
from tidemill.tasks.learn.prequential import prequential_step
from tidemill.tasks.learn.state import parameters_sha256
from tidemill.tasks.records.pii import protected_records
from tidemill.tasks.records.validate import content_hashes, validate_records
from tidemill.tasks.sources.files import Arrival, read_arrival
from tidemill.tasks.sources.postgres import read_window
from tidemill.warehouse import backfills, erasure, registry
from tidemill.warehouse.batches import BatchRecord, next_batch_id, window_stats
from tidemill.warehouse.batches import lag_history as stored_lag_history
from tidemill.warehouse.pipeline_tables import declared_columns

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


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def source_records(
    state: PipelineState, start: datetime, end: datetime, pii_key: bytes
) -> pl.DataFrame:
    """Every record of the source with event time in [start, end), with `_file`: of the
    landing files, or of the table (straight from it, whatever its cursor says). Personal
    fields are protected with `pii_key` as the live ingest does (tasks/records/pii.py)."""
    config = state.config
    source = config.source
    if isinstance(source, RedisStreamSource):
        raise BackfillError(
            f"{config.name} reads a Redis stream: a stream keeps no time index to re-read "
            "a window from (its entries are acknowledged once stored)"
        )
    if isinstance(source, PostgresSource):
        assert config.key is not None  # the config refuses a postgres source without one
        rows = read_window(
            source.dsn,
            source.table,
            config.key,
            declared_columns(config),
            config.event_time,
            start,
            end,
            source.label,
        )
        rows = protected_records(rows, config.pii, pii_key, raw_format="json")
        return rows.sort("_event_at", "_file", "_line")
    frames = []
    for path in sorted(glob.glob(source.path)):
        with open(path, "rb") as handle:
            data = handle.read()
        arrival = Arrival(path, len(data), 0, "", "backfill", 0, data)
        header, records = read_arrival(
            arrival, source.format, declared_columns(config), None, config.event_time
        )
        records = protected_records(
            records, config.pii, pii_key, raw_format=raw_format(source), header=header
        )
        frames.append(records.with_columns(pl.lit(path).alias("_file")))
    if not frames:
        return pl.DataFrame()
    everything = pl.concat(frames, how="vertical_relaxed")
    return everything.filter((pl.col("_event_at") >= start) & (pl.col("_event_at") < end)).sort(
        "_event_at", "_file", "_line"
    )


def _recompute(
    runtime: Runtime, state: PipelineState, new_clean: pl.DataFrame
) -> dict[str, tuple[pl.DataFrame, pl.DataFrame]]:
    """Per aggregate: the windows `new_clean` adds to, and their stats recomputed from
    the stored clean rows of those windows plus `new_clean`."""
    config = state.config
    out = {}
    for spec in config.aggregates:
        keyed = new_clean.with_columns(window_start(config, spec).alias("window_start"))
        windows = keyed.select("window_start", *spec.by).unique()
        if windows.height == 0:
            out[spec.name] = (windows, windows)
            continue
        first = windows["window_start"].min()
        last = windows["window_start"].max() + timedelta(seconds=spec.every_seconds)  # type: ignore[operator]
        stored = backfills.clean_rows_between(
            runtime.con, config.name, config.event_time, first, last
        )  # type: ignore[arg-type]
        rows = pl.concat([stored.select(new_clean.columns), new_clean], how="vertical_relaxed")
        stats = window_partials(rows, config, spec).join(
            windows, on=["window_start", *spec.by], how="semi", nulls_equal=True
        )
        out[spec.name] = (windows, stats)
    return out


def _insert_chunk(
    runtime: Runtime, state: PipelineState, backfill_id: int, chunk: pl.DataFrame
) -> None:
    config = state.config
    started = _now()
    validated = validate_records(chunk, config, _now())
    accepted = validated.accepted
    identity = (
        accepted[config.key] if config.key else content_hashes(accepted, declared_columns(config))
    )
    stored = backfills.stored_identities(runtime.con, config, identity)
    fresh = ~identity.is_in(stored.implode())
    new = accepted.filter(fresh)
    clean = clean_rows(new, config)
    recompute = _recompute(runtime, state, clean)
    ts = clean[config.event_time]
    record = BatchRecord(
        batch_id=next_batch_id(runtime.con),
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
        finished_at=_now(),
    )
    raw = new.select([*declared_columns(config), "_file", "_line"]).with_columns(
        content_hashes(new, declared_columns(config))
    )
    backfills.commit_chunk(
        runtime.con,
        config,
        backfill_id,
        backfills.ChunkWrite(
            lags=_lag_histories(runtime, state, clean),
            record=record,
            raw=raw,
            clean=clean,
            quarantine=validated.rejected.select("_file", "_line", "_raw", "reason"),
            present=int((~fresh).sum()),
        ),
        recompute,
    )


def _lag_histories(
    runtime: Runtime, state: PipelineState, new_clean: pl.DataFrame
) -> dict[str, pl.DataFrame]:
    """Per lag: the stored history of the series `new_clean` touches, with its labels in."""
    config = state.config
    valued = new_clean.with_columns(target_value(config).alias("_value"))
    return {
        lag.name: lag_history(
            stored_lag_history(runtime.con, config, lag, new_clean.select(lag.by)),
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
    with runtime.lock:
        rows = backfills.clean_rows_between(runtime.con, config.name, config.event_time, start, end)
    model = fresh_model(config)
    totals: dict[str, float] = {}
    scored = 0
    for chunk in rows.iter_slices(config.batch_rows):
        with runtime.lock:
            windows = {
                spec.name: window_stats(
                    runtime.con, config, spec, previous_window_keys(chunk, config, spec)
                )
                for spec in config.aggregates
            }
            histories = {
                lag.name: stored_lag_history(runtime.con, config, lag, chunk.select(lag.by))
                for lag in config.lags
            }
        features, _ = batch_features(chunk, config, windows, histories)
        step = prequential_step(model, features, config.target)
        for name, value in step.metrics.items():
            totals[name] = totals.get(name, 0.0) + value * step.n_scored
        scored += step.n_scored
        model = step.learned
    if not model.fitted:
        return None
    metrics = {name: total / scored for name, total in totals.items()} if scored else {}
    with runtime.lock:
        row = registry.write_version(
            runtime.con,
            runtime.state_dir,
            config.name,
            model,
            estimator=config.model.estimator,
            params=config.model.params,
            parent_version=None,
            batch_id=next_batch_id(runtime.con) - 1,
            status="candidate",
            metrics=metrics,
            created_at=_now(),
            candidate=config.model.name,
            params_sha256=parameters_sha256(model),
        )
        registry.record(runtime.con, row)
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
        raise BackfillError(
            f"{name} has no data yet: nothing has landed in {runtime.config.pipeline(name).source.path}"
        )
    with runtime.lock:
        backfill_id = backfills.begin(runtime.con, name, start, end, retrain, requested_by)
    try:
        records = source_records(state, start, end, pii_key(runtime, state.config))
        with runtime.lock:
            erased = erasure.erased_digests(runtime.con, name)
        records = drop_erased(runtime, state.config, records, erased)
        total = records.height
        if total:
            with runtime.lock:
                elsewhere = backfills.waiting_or_quarantined(runtime.con, name)
                backfills.set_total(runtime.con, backfill_id, total)
            records = records.join(elsewhere, on=["_file", "_line"], how="anti")
            skipped = total - records.height
            if skipped:
                with runtime.lock:
                    runtime.con.execute(
                        "UPDATE _backfills SET rows_done = rows_done + ?, rows_present = rows_present + ? "
                        "WHERE backfill_id = ?",
                        [skipped, skipped, backfill_id],
                    )
            if progress:
                progress(skipped, total)
            done = skipped
            for chunk in records.iter_slices(chunk_rows):
                with runtime.lock:
                    _insert_chunk(runtime, state, backfill_id, chunk)
                done += chunk.height
                if progress:
                    progress(done, total)
        candidate = _train_candidate(runtime, state, start, end) if retrain else None
        with runtime.lock:
            backfills.finish(
                runtime.con,
                backfill_id,
                "done",
                candidate_version=candidate[0].version if candidate else None,
            )
            row = backfills.get(runtime.con, backfill_id)
            runtime.unpublished = True
    except (Exception, PanicException) as error:
        with runtime.lock:
            backfills.finish(
                runtime.con, backfill_id, "failed", error=f"{type(error).__name__}: {error}"
            )
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
