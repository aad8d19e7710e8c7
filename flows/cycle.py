"""One micro-batch, start to finish: THE code path for scheduled runs, drains and tests.

ingest new landing files -> take up to batch_rows records -> validate (rejects to
quarantine) -> clean -> aggregate -> join window and lag features -> every candidate
scores (prequential), watches for drift, learns -> the promotion rule -> write the
artifacts -> commit everything in one transaction.

This module orders steps and times them; the logic lives in `tasks/`, the SQL in
`warehouse/`. The Prefect flows in this folder wrap it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

import polars as pl
from polars.exceptions import PanicException

from tidemill import layout
from tidemill.config import (
    LOCAL_BROKER,
    FilesSource,
    PipelineConfig,
    PostgresSource,
    RedisStreamSource,
)
from tidemill.errors import TidemillError
from tidemill.flows.runtime import PipelineState, Runtime, fresh_model, log
from tidemill.keys import get_key
from tidemill.tasks.drift.shift import PSI_ALERT
from tidemill.tasks.features.aggregate import (
    merge_window_stats,
    previous_window_keys,
    target_value,
    window_partials,
    with_window_features,
)
from tidemill.tasks.features.clean import clean_rows
from tidemill.tasks.features.lags import lag_history, with_target_lags
from tidemill.tasks.judge.batch_size import next_batch_rows
from tidemill.tasks.judge.promotion import ScoreWindow, decide
from tidemill.tasks.learn.prequential import Step, prequential_step
from tidemill.tasks.learn.state import ModelState, parameters_sha256
from tidemill.tasks.records.pii import protected_header, protected_records, without_erased
from tidemill.tasks.records.validate import content_hashes, validate_records
from tidemill.tasks.sources.files import Known, discover, landing_paths, read_arrival
from tidemill.tasks.sources.postgres import read_since
from tidemill.tasks.sources.redis_stream import StreamReader
from tidemill.warehouse import cursors, erasure, inbox, registry
from tidemill.warehouse.batches import (
    BatchRecord,
    BatchWrite,
    DriftEvent,
    Promotion,
    Scored,
    commit_batch,
    heartbeat,
    known_keys,
    next_batch_id,
    record_failure,
    window_stats,
)
from tidemill.warehouse.batches import lag_history as stored_lag_history
from tidemill.warehouse.pipeline_tables import declared_columns


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


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def ingest(runtime: Runtime, state: PipelineState, *, drain: bool) -> int:
    """Bring what is new at the pipeline's source into the inbox; returns how many landing
    file versions (or table reads) added to it. Personal fields (`pii`) are protected
    before the records reach the inbox (tasks/records/pii.py), so nothing after this sees them."""
    if isinstance(state.config.source, PostgresSource):
        return _ingest_table(runtime, state, state.config.source)
    if isinstance(state.config.source, RedisStreamSource):
        return _ingest_stream(runtime, state, state.config.source)
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
    records = protected_records(
        read.records, config.pii, pii_key(runtime, config), raw_format="json"
    )
    records = drop_erased(
        runtime, config, records, erasure.erased_digests(runtime.con, config.name)
    )
    cursors.add_read(runtime.con, config.name, source.label, source.cursor, records, read.position)
    return 1


def _ingest_stream(runtime: Runtime, state: PipelineState, source: RedisStreamSource) -> int:
    """One bounded read of the stream as consumer `source.consumer` of its group, unless
    the inbox already holds a batch. The records and the ids read commit together (the
    `_cursors` row of the stream and group); the entries are acknowledged only after
    that commit, and the next read first acknowledges the ids recorded, so an entry is
    neither lost nor stored twice whenever the process stops (tasks/sources/redis_stream.py)."""
    config = state.config
    if inbox.backlog(runtime.con, config.name) >= config.batch_rows:
        return 0
    at = cursors.position(runtime.con, config.name, source.label, source.group)
    columns, limit = declared_columns(config), source.read_rows or 10 * config.batch_rows
    url = source.url
    if url == LOCAL_BROKER:
        url = layout.local_broker_url(runtime.state_dir)
    with StreamReader(url, source.stream, source.group, source.consumer) as reader:
        read = reader.read(limit, columns, config.event_time, committed=at.keys_at_last)
        if read.records.height == 0:
            return 0
        records = protected_records(
            read.records, config.pii, pii_key(runtime, config), raw_format="json"
        )
        records = drop_erased(
            runtime, config, records, erasure.erased_digests(runtime.con, config.name)
        )
        cursors.add_read(
            runtime.con, config.name, source.label, source.group, records, read.position
        )
        reader.ack(read.position.keys_at_last)  # stored: only now may the broker forget them
    return 1


def _ingest_files(
    runtime: Runtime, state: PipelineState, source: FilesSource, *, drain: bool
) -> int:
    """Read every new landing file version into the inbox; returns how many."""
    config = state.config
    paths = landing_paths(source.path)
    ledger = inbox.ledger(runtime.con, config.name, paths)
    known = {p: Known(v.size_bytes, v.mtime_ns, v.sha256) for p, v in ledger.items()}
    headers = inbox.headers(runtime.con, config.name, paths)
    settle = 0.0 if drain else source.settle_seconds
    arrivals = discover(paths, known, settle, time.time_ns())
    required = declared_columns(config)
    key = pii_key(runtime, config)
    erased = erasure.erased_digests(runtime.con, config.name) if arrivals else frozenset()
    for arrival in arrivals:
        header, records = read_arrival(
            arrival, source.format, required, headers.get(arrival.path), config.event_time
        )
        records = protected_records(
            records, config.pii, key, raw_format=raw_format(source), header=header
        )
        records = drop_erased(runtime, config, records, erased)
        if config.pii:
            header = protected_header(header, {*required, *config.pii})
        inbox.add_file(runtime.con, config.name, arrival, header, records)
    return len(arrivals)


def drop_erased(
    runtime: Runtime, config: PipelineConfig, records: pl.DataFrame, erased: frozenset[str]
) -> pl.DataFrame:
    """`records` without those of subjects erased from the pipeline (`erased`: their
    digests), which a source may still hold; how many were left out is logged."""
    if not erased:
        return records
    kept, dropped = without_erased(
        records, config.subject, get_key(runtime.state_dir, "pii"), erased
    )
    if dropped:
        log.warning(
            "%s: %d records of erased subjects read again: not stored", config.name, dropped
        )
    return kept


def pii_key(runtime: Runtime, config: PipelineConfig) -> bytes:
    """The key personal fields are pseudonymised with (none needed without `pii`)."""
    return get_key(runtime.state_dir, "pii") if config.pii else b""


def raw_format(source: FilesSource) -> Literal["csv", "json"]:
    """How a landing record's `_raw` splits into fields: CSV lines, else JSON objects
    (ndjson lines; Parquet rows are kept as JSON)."""
    return "csv" if source.format == "csv" else "json"


def batch_features(
    clean: pl.DataFrame,
    config: PipelineConfig,
    windows: dict[str, pl.DataFrame],
    histories: dict[str, pl.DataFrame],
) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """`clean` plus window and lag features, and the lag histories after the batch.

    `windows`: per aggregate, the stats of the windows the rows read (stored ones merged
    with the batch's own partials); `histories`: per lag, the stored latest labels of the
    batch's series. Pure: the live cycle and `replay-model` feed it the same inputs."""
    features = clean
    for spec in config.aggregates:
        features = with_window_features(features, config, spec, windows[spec.name])
    new_histories: dict[str, pl.DataFrame] = {}
    if config.lags:
        features = features.with_columns(target_value(config).alias("_value"))
        for lag in config.lags:
            options = {"event_time": config.event_time, "by": lag.by, "n": lag.n}
            history = histories[lag.name]
            new_histories[lag.name] = lag_history(history, features, **options)  # type: ignore[arg-type]
            features = with_target_lags(features, history, name=lag.name, **options)  # type: ignore[arg-type]
        features = features.drop("_value")
    return features, new_histories


def _features(
    runtime: Runtime, state: PipelineState, clean: pl.DataFrame, partials: dict[str, pl.DataFrame]
) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    config = state.config
    windows = {}
    for spec in config.aggregates:
        wanted = previous_window_keys(clean, config, spec)
        stored = window_stats(runtime.con, config, spec, wanted)
        windows[spec.name] = merge_window_stats(stored, partials[spec.name], spec)
    histories = {
        lag.name: stored_lag_history(runtime.con, config, lag, clean.select(lag.by))
        for lag in config.lags
    }
    return batch_features(clean, config, windows, histories)


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
        limit = state.batch_rows
        with timer("read"):
            records = inbox.take(runtime.con, name, limit)
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
        clock = time.perf_counter()
        try:
            write, outcome = _batch(
                runtime, state, records, batch_id, started, timer, flow_run_id, limit
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
                        batch_rows_limit=limit,
                    ),
                )
            except Exception as unrecorded:  # e.g. the disk is still full
                log.warning("could not record failed batch %s: %s", batch_id, unrecorded)
            try:
                runtime.reload_model(name)
            except registry.ArtifactIntegrityError as refused:  # the batch's failure is the news
                runtime.pipelines.pop(name, None)  # the next cycle tries (and says) again
                log.error("%s: the committed model cannot be loaded again: %s", name, refused)
            raise BatchFailed(report) from error
        outcome.apply(state)
        backlog = inbox.backlog(runtime.con, name)
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


@dataclass
class _Outcome:
    """How the resident pipeline state changes once the batch has committed."""

    models: dict[str, ModelState]
    versions: dict[str, int | None]
    champion: str
    windows: dict[str, ScoreWindow]

    def apply(self, state: PipelineState) -> None:
        state.models, state.versions = self.models, self.versions
        state.champion, state.windows = self.champion, self.windows


def _batch(
    runtime: Runtime,
    state: PipelineState,
    records: pl.DataFrame,
    batch_id: int,
    started: datetime,
    timer: _Timer,
    flow_run_id: str | None,
    limit: int,
) -> tuple[BatchWrite, _Outcome]:
    """Compute everything the batch will commit (no writes yet but the artifact files)."""
    config = state.config
    with timer("validate"):
        stored = known_keys(runtime.con, config, records[config.key]) if config.key else None
        validated = validate_records(records, config, _now(), known_keys=stored)
    with timer("clean"):
        clean = clean_rows(validated.accepted, config)
    with timer("aggregate"):
        partials = {spec.name: window_partials(clean, config, spec) for spec in config.aggregates}
        features, histories = _features(runtime, state, clean, partials)
    with timer("learn"):
        steps = {
            name: prequential_step(
                model, features, config.target, runtime.learner(config, name, features.height)
            )
            for name, model in state.models.items()
        }
        outcome, scored, drift, events = _judge(state, steps, features, batch_id)
    rows_learned = steps[state.champion].rows_learned
    versions: list[registry.ModelVersion] = []
    if not rows_learned:  # no version: the models stay exactly as their last versions
        outcome = _Outcome(state.models, state.versions, state.champion, state.windows)
        events, drift = [], []
    else:
        with timer("artifact"):
            versions = _write_versions(runtime, state, steps, outcome, batch_id)
        outcome.versions = {**outcome.versions, **{v.candidate: v.version for v in versions}}
        events = [replace(e, to_version=outcome.versions[outcome.champion]) for e in events]
    serving = steps[state.champion].scores
    predictions = None
    if serving is not None:
        keep = [c for c in (config.key, config.event_time) if c]
        predictions = clean.select(keep).with_columns(
            pl.Series("prediction", serving.predictions.astype(str)),
            pl.Series("score", serving.scores, dtype=pl.Float64),
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
        model_version=outcome.versions[outcome.champion],
        started_at=started,
        finished_at=_now(),
        timings_ms=timer.ms,
        flow_run_id=flow_run_id,
        batch_rows_limit=limit,
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
        lags=histories,
        predictions=predictions,
        scored_by=state.version if serving is not None else None,
        scored=scored,
        versions=versions,
        drift=drift,
        shift=steps[state.champion].shift if rows_learned else [],
        events=events,
        shards={  # a challenger restarted on drift relearned the batch in one piece
            v.version: steps[v.candidate].shards
            for v in versions
            if steps[v.candidate].shards
            and outcome.models[v.candidate] is steps[v.candidate].learned
        },
    )
    return write, outcome


def _judge(
    state: PipelineState,
    steps: dict[str, Step],
    features: pl.DataFrame,
    batch_id: int,
) -> tuple[_Outcome, list[Scored], list[DriftEvent], list[Promotion]]:
    """Scores, drift and the promotion rule: who serves after this batch."""
    config = state.config
    windows = {n: ScoreWindow(w.rows, w.batches.copy()) for n, w in state.windows.items()}
    scored: list[Scored] = []
    for name, step in steps.items():
        version = state.versions[name]
        if step.metrics and version is not None:
            scored.append(Scored(name, version, step.n_scored, step.metrics))
            windows[name].add(batch_id, step.n_scored, step.metrics.get(state.metric, float("nan")))
    learned = {name: step.learned for name, step in steps.items()}
    versions = dict(state.versions)
    drift: list[DriftEvent] = []
    reset = False
    for name, step in steps.items():
        if not step.drift_at:
            continue
        reset = reset or (name == state.champion and config.drift.on_drift == "reset_challengers")
        action = "challengers_reset" if reset and name == state.champion else "logged"
        drift.append(DriftEvent(name, config.drift.detector, None, step.drift_error, action))
    for window in steps[state.champion].shift:
        for feature, psi in window.items():
            if psi > PSI_ALERT:
                drift.append(DriftEvent(state.champion, "psi", feature, psi, "logged"))
    if reset:  # every challenger starts over on this batch's rows
        for spec in config.challengers:
            if spec.name != state.champion:
                fresh = fresh_model(config, spec)
                learned[spec.name] = prequential_step(fresh, features, config.target).learned
                versions[spec.name] = None
                windows[spec.name] = ScoreWindow(rows=config.promotion.window_rows)
    champion = state.champion
    events: list[Promotion] = []
    decision = decide(
        champion,
        windows,
        metric=state.metric,
        min_rows=config.promotion.min_rows,
        margin=config.promotion.margin,
    )
    if decision is not None and steps[champion].rows_learned:
        events.append(
            Promotion(
                "auto_promote", state.versions[champion], -1, decision.reason, decision.evidence
            )
        )
        champion = decision.candidate
    return _Outcome(learned, versions, champion, windows), scored, drift, events


def _write_versions(
    runtime: Runtime,
    state: PipelineState,
    steps: dict[str, Step],
    outcome: _Outcome,
    batch_id: int,
) -> list[registry.ModelVersion]:
    """One artifact per candidate, numbered in a fixed order (champion first)."""
    config = state.config
    specs = {spec.name: spec for spec in config.candidates}
    first = registry.next_version(runtime.con, config.name)
    order = sorted(outcome.models, key=lambda n: (n != state.champion, n))
    written = []
    for offset, name in enumerate(order):
        model = outcome.models[name]
        spec = specs.get(name)
        written.append(
            registry.write_version(
                runtime.con,
                runtime.state_dir,
                config.name,
                model,
                estimator=spec.estimator if spec else type(model.estimator).__name__,
                params=dict(spec.params) if spec else {},
                parent_version=outcome.versions[name],
                batch_id=batch_id,
                status="champion" if name == outcome.champion else "challenger",
                metrics=steps[name].metrics,
                created_at=_now(),
                candidate=name,
                params_sha256=parameters_sha256(model),
                version=first + offset,
            )
        )
    return written
