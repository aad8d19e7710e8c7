"""One micro-batch, start to finish: THE code path for scheduled runs, drains and tests.

ingest what is new at the source -> take up to batch_rows records -> validate (rejects to
quarantine) -> clean -> aggregate -> join window and lag features -> every candidate
scores (prequential), watches for drift, learns -> the verdict (tasks/judge/verdict.py) ->
write the artifacts -> commit everything in one transaction.

This module orders steps and times them; the logic lives in `tasks/`, the SQL in
`warehouse/`. The Prefect flows wrap it (through drive.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import polars as pl
from polars.exceptions import PanicException

from tidemill import utc
from tidemill.config.pipeline import PipelineConfig
from tidemill.errors import TidemillError
from tidemill.flows.engine.features import batch_partials, clean_batch, model_inputs
from tidemill.flows.engine.ingest import ingest
from tidemill.flows.engine.models import PipelineState
from tidemill.flows.engine.runtime import Runtime, log
from tidemill.tasks.features.aggregate import (
    merge_window_stats,
    previous_window_keys,
)
from tidemill.tasks.judge.batch_size import next_batch_rows
from tidemill.tasks.judge.verdict import DriftEvent, Promotion, Verdict, judge_batch
from tidemill.tasks.learn.prequential import Step, prequential_step
from tidemill.tasks.learn.state import parameters_sha256
from tidemill.tasks.records.validate import RecordSchema, content_hashes, validate_records
from tidemill.tasks.sources.loader import source_for
from tidemill.warehouse import artifacts, inbox, registry
from tidemill.warehouse.connection import Connection
from tidemill.warehouse.ledger.batches import (
    BatchRecord,
    BatchWrite,
    commit_batch,
    heartbeat,
    known_keys,
    next_batch_id,
    record_failure,
    window_stats,
)
from tidemill.warehouse.ledger.batches import lag_history as stored_lag_history


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
    champion: str | None = None
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> metrics
    drift: list[DriftEvent] = field(default_factory=list)
    promotions: list[Promotion] = field(default_factory=list)
    batch_rows_limit: int | None = None


class BatchFailed(TidemillError, RuntimeError):
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


def run_cycle(
    runtime: Runtime, name: str, *, drain: bool = False, flow_run_id: str | None = None
) -> CycleReport:
    """Run one micro-batch of pipeline `name` and return what it did.

    Raises BatchFailed (after recording the failure and reloading the committed models)
    when the batch cannot commit.
    """
    timer = _Timer()
    state = runtime.pipeline(name)
    if state is None:
        return CycleReport(pipeline=name, status="waiting")
    config = state.config
    with runtime.writing() as con:
        with timer("ingest"):
            files_read = ingest(
                con, runtime.state_dir, config, source_for(config, runtime.state_dir), drain=drain
            )
        limit = state.batch_rows
        with timer("read"):
            records = inbox.take(con, name, limit)
        if records.height == 0:
            heartbeat(con, name, utc.now())
            runtime.after_cycle(committed=False)
            return CycleReport(
                pipeline=name,
                status="empty",
                files_read=files_read,
                model_version=state.version,
                timings_ms=timer.ms,
            )
        batch_id = next_batch_id(con)
        started = utc.now()
        clock = time.perf_counter()
        try:
            write, verdict = _batch(
                runtime, con, state, records, batch_id, started, timer, flow_run_id, limit
            )
            with timer("write"):
                commit_batch(con, config, write)
        except (Exception, PanicException) as error:
            failed = CycleReport(
                pipeline=name,
                status="failed",
                batch_id=batch_id,
                files_read=files_read,
                rows_in=records.height,
                timings_ms=timer.ms,
                error=f"{type(error).__name__}: {error}",
            )
            _record_failure(runtime, con, state, failed, started, flow_run_id, limit)
            raise BatchFailed(failed) from error
        state.models, state.versions = verdict.models, verdict.versions
        state.champion, state.windows = verdict.champion, verdict.windows
        backlog = inbox.backlog(con, name)
        if config.adaptive_batch is not None:
            adaptive = config.adaptive_batch
            state.batch_rows = next_batch_rows(
                limit,
                seconds=time.perf_counter() - clock,
                every_seconds=config.every_seconds,
                backlog=backlog,
                min_rows=adaptive.min_rows,
                max_rows=adaptive.max_rows,
                target_fraction=adaptive.target_fraction,
            )
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
        champion=state.champion,
        candidates={s.candidate: s.metrics for s in write.scored},
        drift=write.drift,
        promotions=write.events,
        batch_rows_limit=limit,
    )


def _record_failure(
    runtime: Runtime,
    con: Connection,
    state: PipelineState,
    failed: CycleReport,
    started: datetime,
    flow_run_id: str | None,
    limit: int,
) -> None:
    """Record a batch that could not commit (its records stay in the inbox) and load the
    committed models again, so nothing the batch half-learned survives."""
    name = failed.pipeline
    try:
        record_failure(
            con,
            BatchRecord(
                batch_id=failed.batch_id or 0,
                pipeline=name,
                status="failed",
                window_start_at=None,
                window_end_at=None,
                rows_in=failed.rows_in,
                rows_accepted=0,
                rows_quarantined=0,
                rows_learned=0,
                model_version=state.version,
                started_at=started,
                finished_at=utc.now(),
                timings_ms=failed.timings_ms,
                flow_run_id=flow_run_id,
                error=failed.error,
                batch_rows_limit=limit,
            ),
        )
    except Exception as unrecorded:  # e.g. the disk is still full
        log.warning("could not record failed batch %s: %s", failed.batch_id, unrecorded)
    try:
        runtime.reload_model(name)
    except artifacts.ArtifactIntegrityError as refused:  # the batch's failure is the news
        runtime.pipelines.forget(name)  # the next cycle tries (and says) again
        log.error("%s: the committed model cannot be loaded again: %s", name, refused)


def _features(
    con: Connection, config: PipelineConfig, clean: pl.DataFrame, partials: dict[str, pl.DataFrame]
) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """The batch's model inputs, with the stored windows and lag histories it reads."""
    windows = {}
    for spec in config.aggregates:
        wanted = previous_window_keys(clean, spec, event_time=config.event_time)
        stored = window_stats(con, config, spec, wanted)
        windows[spec.name] = merge_window_stats(stored, partials[spec.name], spec)
    histories = {
        lag.name: stored_lag_history(con, config, lag, clean.select(lag.by)) for lag in config.lags
    }
    return model_inputs(config, clean, windows, histories)


def _batch(
    runtime: Runtime,
    con: Connection,
    state: PipelineState,
    records: pl.DataFrame,
    batch_id: int,
    started: datetime,
    timer: _Timer,
    flow_run_id: str | None,
    limit: int,
) -> tuple[BatchWrite, Verdict]:
    """Compute everything the batch will commit (no writes yet but the artifact files)."""
    config = state.config
    with timer("validate"):
        stored = known_keys(con, config, records[config.key]) if config.key else None
        validated = validate_records(records, RecordSchema.of(config), utc.now(), known_keys=stored)
    with timer("clean"):
        clean = clean_batch(config, validated.accepted)
    with timer("aggregate"):
        partials = {spec.name: batch_partials(config, clean, spec) for spec in config.aggregates}
        features, histories = _features(con, config, clean, partials)
    with timer("learn"):
        steps = {
            name: prequential_step(
                model,
                features,
                config.target,
                runtime.placement.learner(config, name, features.height),
            )
            for name, model in state.models.items()
        }
        verdict = judge_batch(
            config,
            state.champion,
            state.versions,
            state.windows,
            state.metric,
            steps,
            features,
            batch_id,
        )
    rows_learned = steps[state.champion].rows_learned
    versions: list[registry.ModelVersion] = []
    if not rows_learned:  # no version: the models stay exactly as their last versions
        verdict = Verdict(
            state.models, state.versions, state.champion, state.windows, verdict.scored, [], []
        )
    else:
        with timer("artifact"):
            versions = _write_versions(con, runtime.state_dir, state, steps, verdict, batch_id)
        verdict.versions = {**verdict.versions, **{v.candidate: v.version for v in versions}}
        serving_version = verdict.versions[verdict.champion]
        assert serving_version is not None  # the champion learned the batch: it has a version
        verdict.promotions = [replace(e, to_version=serving_version) for e in verdict.promotions]
    serving = steps[state.champion].scores
    predictions = None
    if serving is not None:
        keep = [c for c in (config.key, config.event_time) if c]
        predictions = clean.select(keep).with_columns(
            pl.Series("prediction", serving.predictions.astype(str)),
            pl.Series("score", serving.scores, dtype=pl.Float64),
        )
    ts = clean[config.event_time]
    raw_columns = [*config.source_columns, "_file", "_line"]
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
        model_version=verdict.versions[verdict.champion],
        started_at=started,
        finished_at=utc.now(),
        timings_ms=timer.ms,
        flow_run_id=flow_run_id,
        batch_rows_limit=limit,
    )
    write = BatchWrite(
        record=record,
        taken=records["_seq"],
        raw=validated.accepted.select(raw_columns).with_columns(
            content_hashes(validated.accepted, config.source_columns)
        ),
        quarantine=validated.rejected.select("_file", "_line", "_raw", "reason"),
        clean=clean,
        aggregates=partials,
        lags=histories,
        predictions=predictions,
        scored_by=state.version if serving is not None else None,
        scored=verdict.scored,
        versions=versions,
        drift=verdict.drift,
        shift=steps[state.champion].shift if rows_learned else [],
        events=verdict.promotions,
        shards={  # a challenger restarted on drift relearned the batch in one piece
            v.version: steps[v.candidate].shards
            for v in versions
            if steps[v.candidate].shards
            and verdict.models[v.candidate] is steps[v.candidate].learned
        },
    )
    return write, verdict


def _write_versions(
    con: Connection,
    state_dir: Path,
    state: PipelineState,
    steps: dict[str, Step],
    verdict: Verdict,
    batch_id: int,
) -> list[registry.ModelVersion]:
    """One artifact per candidate, numbered in a fixed order (champion first)."""
    config = state.config
    specs = {spec.name: spec for spec in config.candidates}
    first = registry.next_version(con, config.name)
    order = sorted(verdict.models, key=lambda n: (n != state.champion, n))
    written = []
    for offset, name in enumerate(order):
        model = verdict.models[name]
        spec = specs.get(name)
        written.append(
            artifacts.write_version(
                con,
                state_dir,
                config.name,
                model,
                estimator=spec.estimator if spec else type(model.estimator).__name__,
                params=dict(spec.params) if spec else {},
                parent_version=verdict.versions[name],
                batch_id=batch_id,
                status="champion" if name == verdict.champion else "challenger",
                metrics=steps[name].metrics,
                created_at=utc.now(),
                candidate=name,
                params_sha256=parameters_sha256(model),
                version=first + offset,
            )
        )
    return written
