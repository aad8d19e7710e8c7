"""One micro-batch, start to finish: THE code path for scheduled runs, drains and tests.

ingest new landing files -> take up to batch_rows records -> validate (rejects to
quarantine) -> clean -> aggregate -> join window features -> score (prequential) ->
partial_fit -> write the artifact -> commit everything in one transaction.

This module orders steps and times them; the logic lives in `tasks/`, the SQL in
`warehouse/`. The Prefect flows in this folder wrap it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl
from polars.exceptions import PanicException

from flows.runtime import PipelineState, Runtime, log
from tasks.aggregate import (
    merge_window_stats,
    previous_window_keys,
    window_partials,
    with_window_features,
)
from tasks.clean import clean_rows
from tasks.landing import Known, discover, read_arrival
from tasks.metrics import prequential_metrics
from tasks.model import ModelState, learn, predict
from tasks.postgres_source import read_since
from tasks.validate import content_hashes, validate_records
from tidemill.config import FilesSource, PostgresSource
from warehouse import cursors, inbox, registry
from warehouse.batches import (
    BatchRecord,
    BatchWrite,
    commit_batch,
    heartbeat,
    known_keys,
    next_batch_id,
    record_failure,
    window_stats,
)
from warehouse.pipeline_tables import declared_columns


@dataclass(frozen=True)
class CycleReport:
    """What one cycle did."""

    pipeline: str
    status: str  # committed | empty | waiting | failed
    batch_id: int | None = None
    files_read: int = 0
    rows_in: int = 0
    rows_accepted: int = 0
    rows_quarantined: int = 0
    rows_learned: int = 0
    model_version: int | None = None
    scored_by: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    backlog: int = 0
    error: str | None = None


class BatchFailed(RuntimeError):
    """A batch could not commit; nothing of it was written. Carries its report."""

    def __init__(self, report: CycleReport) -> None:
        super().__init__(f"batch {report.batch_id} of {report.pipeline} failed: {report.error}")
        self.report = report


class _Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[step] = self.ms.get(step, 0.0) + (time.perf_counter() - start) * 1000


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def ingest(runtime: Runtime, state: PipelineState, *, drain: bool) -> int:
    """Bring what is new at the pipeline's source into the inbox; returns how many landing
    file versions (or table reads) added to it."""
    if isinstance(state.config.source, PostgresSource):
        return _ingest_table(runtime, state, state.config.source)
    return _ingest_files(runtime, state, state.config.source, drain=drain)


def _ingest_table(runtime: Runtime, state: PipelineState, source: PostgresSource) -> int:
    """One bounded incremental read of the table, unless the inbox already holds a batch
    (so a large table never piles up in the inbox); records and cursor commit together."""
    config = state.config
    assert config.key is not None  # the config refuses a postgres source without one
    if inbox.backlog(runtime.con, config.name) >= config.batch_rows:
        return 0
    at = cursors.position(runtime.con, config.name, source.label, source.cursor)
    read = read_since(
        source.dsn,
        source.table,
        source.cursor,
        config.key,
        declared_columns(config),
        at,
        source.read_rows or 10 * config.batch_rows,
        config.event_time,
        source.label,
    )
    if read.records.height == 0:
        return 0
    cursors.add_read(
        runtime.con, config.name, source.label, source.cursor, read.records, read.position
    )
    return 1


def _ingest_files(
    runtime: Runtime, state: PipelineState, source: FilesSource, *, drain: bool
) -> int:
    """Read every new landing file version into the inbox; returns how many."""
    config = state.config
    ledger = inbox.ledger(runtime.con, config.name)
    known = {p: Known(v.size_bytes, v.mtime_ns, v.sha256) for p, v in ledger.items()}
    headers = inbox.headers(runtime.con, config.name)
    settle = 0.0 if drain else source.settle_seconds
    arrivals = discover(source.path, known, settle, time.time_ns())
    required = declared_columns(config)
    for arrival in arrivals:
        header, records = read_arrival(
            arrival, source.format, required, headers.get(arrival.path), config.event_time
        )
        inbox.add_file(runtime.con, config.name, arrival, header, records)
    return len(arrivals)


def _features(
    runtime: Runtime, state: PipelineState, clean: pl.DataFrame, partials: dict[str, pl.DataFrame]
) -> pl.DataFrame:
    config = state.config
    features = clean
    for spec in config.aggregates:
        wanted = previous_window_keys(clean, config, spec)
        stored = window_stats(runtime.con, config, spec, wanted)
        merged = merge_window_stats(stored, partials[spec.name], spec)
        features = with_window_features(features, config, spec, merged)
    return features


def run_cycle(
    runtime: Runtime, name: str, *, drain: bool = False, flow_run_id: str | None = None
) -> CycleReport:
    """Run one micro-batch of pipeline `name` and return what it did.

    Raises BatchFailed (after recording the failure and reloading the committed model)
    when the batch cannot commit.
    """
    timer = _Timer()
    state = runtime.pipeline(name)
    if state is None:
        return CycleReport(pipeline=name, status="waiting")
    config = state.config
    with runtime.lock:
        with timer("ingest"):
            files_read = ingest(runtime, state, drain=drain)
        with timer("read"):
            records = inbox.take(runtime.con, name, config.batch_rows)
        if records.height == 0:
            heartbeat(runtime.con, name, _now())
            runtime.after_cycle(committed=False)
            return CycleReport(
                pipeline=name,
                status="empty",
                files_read=files_read,
                model_version=state.version,
                timings_ms=timer.ms,
            )
        batch_id = next_batch_id(runtime.con)
        started = _now()
        try:
            write, new_state = _batch(
                runtime, state, records, batch_id, started, timer, flow_run_id
            )
            with timer("write"):
                commit_batch(runtime.con, config, write)
        except (Exception, PanicException) as error:
            report = CycleReport(
                pipeline=name,
                status="failed",
                batch_id=batch_id,
                files_read=files_read,
                rows_in=records.height,
                timings_ms=timer.ms,
                error=f"{type(error).__name__}: {error}",
            )
            try:
                record_failure(
                    runtime.con,
                    BatchRecord(
                        batch_id=batch_id,
                        pipeline=name,
                        status="failed",
                        window_start_at=None,
                        window_end_at=None,
                        rows_in=records.height,
                        rows_accepted=0,
                        rows_quarantined=0,
                        rows_learned=0,
                        model_version=state.version,
                        started_at=started,
                        finished_at=_now(),
                        timings_ms=timer.ms,
                        flow_run_id=flow_run_id,
                        error=report.error,
                    ),
                )
            except Exception as unrecorded:  # e.g. the disk is still full
                log.warning("could not record failed batch %s: %s", batch_id, unrecorded)
            runtime.reload_model(name)
            raise BatchFailed(report) from error
        if new_state is not None:
            state.model, state.version = new_state
        backlog = inbox.backlog(runtime.con, name)
    runtime.after_cycle(committed=True)
    record = write.record
    return CycleReport(
        pipeline=name,
        status="committed",
        batch_id=batch_id,
        files_read=files_read,
        rows_in=record.rows_in,
        rows_accepted=record.rows_accepted,
        rows_quarantined=record.rows_quarantined,
        rows_learned=record.rows_learned,
        model_version=state.version,
        scored_by=write.scored_by,
        metrics=write.metrics,
        timings_ms=timer.ms,
        backlog=backlog,
    )


def _batch(
    runtime: Runtime,
    state: PipelineState,
    records: pl.DataFrame,
    batch_id: int,
    started: datetime,
    timer: _Timer,
    flow_run_id: str | None,
) -> tuple[BatchWrite, tuple[ModelState, int] | None]:
    """Compute everything the batch will commit (no writes yet)."""
    config = state.config
    with timer("validate"):
        stored = known_keys(runtime.con, config, records[config.key]) if config.key else None
        validated = validate_records(records, config, _now(), known_keys=stored)
    with timer("clean"):
        clean = clean_rows(validated.accepted, config)
    with timer("aggregate"):
        partials = {spec.name: window_partials(clean, config, spec) for spec in config.aggregates}
        features = _features(runtime, state, clean, partials)
    with timer("score"):
        candidate = copy.deepcopy(state.model)
        candidate.encoder.update(features)
        x = candidate.encoder.transform(features)
        scores = predict(candidate, x)
        target = features[config.target]
        labelled = target.is_not_null().to_numpy()
        y = target.to_numpy()[labelled]
        metrics = (
            prequential_metrics(config.task, scores.subset(labelled), y)
            if scores is not None
            else {}
        )
    new_state = None
    version_row = None
    rows_learned = int(labelled.sum())
    if rows_learned:
        with timer("learn"):
            learned = learn(candidate, x[labelled], y)
        with timer("artifact"):
            version_row = registry.write_version(
                runtime.con,
                runtime.state_dir,
                config.name,
                learned,
                estimator=config.model.estimator,
                params=config.model.params,
                parent_version=state.version,
                batch_id=batch_id,
                status="champion",
                metrics=metrics,
                created_at=_now(),
            )
        new_state = (learned, version_row.version)
    predictions = None
    if scores is not None:
        keep = [c for c in (config.key, config.event_time) if c]
        predictions = clean.select(keep).with_columns(
            pl.Series("prediction", scores.predictions.astype(str)),
            pl.Series("score", scores.scores, dtype=pl.Float64),
        )
    ts = clean[config.event_time]
    raw_columns = [*declared_columns(config), "_file", "_line"]
    record = BatchRecord(
        batch_id=batch_id,
        pipeline=config.name,
        status="committed",
        window_start_at=ts.min() if clean.height else None,  # type: ignore[arg-type]
        window_end_at=ts.max() if clean.height else None,  # type: ignore[arg-type]
        rows_in=records.height,
        rows_accepted=validated.accepted.height,
        rows_quarantined=validated.rejected.height,
        rows_learned=rows_learned,
        model_version=version_row.version if version_row else state.version,
        started_at=started,
        finished_at=_now(),
        timings_ms=timer.ms,
        flow_run_id=flow_run_id,
    )
    write = BatchWrite(
        record=record,
        taken=records["_seq"],
        raw=validated.accepted.select(raw_columns).with_columns(
            content_hashes(validated.accepted, declared_columns(config))
        ),
        quarantine=validated.rejected.select("_file", "_line", "_raw", "reason"),
        clean=clean,
        aggregates=partials,
        predictions=predictions,
        scored_by=state.version if scores is not None else None,
        metrics=metrics,
        n_scored=int(labelled.sum()) if scores is not None else 0,
        version=version_row,
    )
    return write, new_state
