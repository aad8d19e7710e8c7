"""Read-only SQL behind `tidemill status`, `tidemill models` and the report page (run
through any reader: the owner's cursor, the file, the snapshot)."""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from tidemill.tasks.report.page import ReportData
from tidemill.warehouse.pipeline_tables import PipelineTables
from tidemill.warehouse.quoting import lit
from tidemill.warehouse.serving.readonly import QueryResult

Read = Callable[[str], QueryResult]
"""Runs read-only SQL on the warehouse: through the CLI's access, or on an owner's cursor."""


def status_sql(pipelines: list[str]) -> str:
    """One row per pipeline: batches, rows, quarantine, backlog, lag, champion."""
    parts = []
    for name in pipelines:
        t = PipelineTables(name)
        parts.append(
            f"""SELECT {lit(name)} AS pipeline,
  (SELECT count(*) FROM _batches WHERE pipeline = {lit(name)} AND status = 'committed') AS batches,
  (SELECT count(*) FROM _batches WHERE pipeline = {lit(name)} AND status = 'failed') AS failed,
  w.last_batch_id AS last_batch,
  (SELECT max(finished_at) FROM _batches WHERE pipeline = {lit(name)}) AS last_batch_at,
  w.rows_total AS rows,
  (SELECT count(*) FROM {t.quarantine}) AS quarantined,
  (SELECT count(*) FROM {t.inbox}) AS backlog,
  w.event_time_at AS watermark,
  round(epoch(now()::TIMESTAMP - w.heartbeat_at), 1) AS heartbeat_age_s,
  (SELECT max(version) FROM ml.model_versions WHERE pipeline = {lit(name)} AND status = 'champion') AS champion
FROM _watermarks w WHERE w.pipeline = {lit(name)}"""
        )
    return "\nUNION ALL\n".join(parts) + "\nORDER BY pipeline"


def known_pipelines_sql() -> str:
    """Pipelines that have tables in this warehouse."""
    return "SELECT pipeline FROM _pipelines ORDER BY pipeline"


def models_sql(pipeline: str, version: int | None = None) -> str:
    """Registry rows of `pipeline` (one version, or all newest first)."""
    where = f"pipeline = {lit(pipeline)}" + (f" AND version = {int(version)}" if version else "")
    return f"""SELECT version, parent_version, candidate, status, batch_id, batches_seen, rows_seen,
  created_at, sha256, params_sha256, estimator, params_json, library_versions, feature_names,
  metrics_json, artifact_path
FROM ml.model_versions WHERE {where} ORDER BY version DESC"""


def recent_metrics_sql(pipeline: str, batches: int = 20) -> str:
    """Prequential metrics of the last `batches` scored batches, newest first, one row per
    candidate that scored them."""
    return f"""SELECT batch_id, candidate, model_version AS scored_by, max(n_scored) AS n_scored,
  string_agg(metric || '=' || round(value, 4), ' ' ORDER BY metric) AS metrics
FROM ml.batch_metrics WHERE pipeline = {lit(pipeline)}
  AND batch_id > (SELECT coalesce(max(batch_id), 0) - {int(batches)} FROM ml.batch_metrics
                  WHERE pipeline = {lit(pipeline)})
GROUP BY batch_id, candidate, model_version ORDER BY batch_id DESC, candidate"""


def candidates_sql(pipeline: str, batches: int = 20) -> str:
    """Per candidate: its serving version and status, and its prequential metrics over the
    last `batches` batches (rows-weighted), champion first."""
    return f"""WITH recent AS (
  SELECT candidate, metric, sum(value * n_scored) / sum(n_scored) AS value, sum(n_scored) AS n
  FROM ml.batch_metrics WHERE pipeline = {lit(pipeline)}
    AND batch_id > (SELECT coalesce(max(batch_id), 0) - {int(batches)} FROM ml.batch_metrics
                    WHERE pipeline = {lit(pipeline)})
  GROUP BY candidate, metric)
SELECT v.candidate, v.status, v.version, v.estimator, v.rows_seen, any_value(r.n) AS rows_scored,
  string_agg(r.metric || '=' || round(r.value, 4), ' ' ORDER BY r.metric) AS metrics
FROM ml.model_versions v LEFT JOIN recent r USING (candidate)
WHERE v.pipeline = {lit(pipeline)} AND v.status IN ('champion', 'challenger')
GROUP BY ALL ORDER BY v.status DESC, v.candidate"""


def drift_sql(pipeline: str, limit: int = 10) -> str:
    """The latest drift events, newest first."""
    return f"""SELECT batch_id, detected_at, candidate, detector, feature, round(value, 4) AS value,
  action FROM ml.drift_events WHERE pipeline = {lit(pipeline)}
ORDER BY batch_id DESC, detector LIMIT {int(limit)}"""


def batch_series_sql(pipeline: str) -> str:
    """Every batch of `pipeline` in order: when, its rows, and its step timings (JSON)."""
    return f"""SELECT batch_id, status, finished_at, rows_in, rows_accepted, rows_quarantined,
  rows_learned, timings_json
FROM _batches WHERE pipeline = {lit(pipeline)} ORDER BY batch_id"""


def metric_series_sql(pipeline: str) -> str:
    """Every prequential metric of `pipeline`, per batch and candidate, in batch order."""
    return f"""SELECT batch_id, candidate, model_version, metric, value, n_scored
FROM ml.batch_metrics WHERE pipeline = {lit(pipeline)} ORDER BY batch_id, candidate, metric"""


def quarantine_reasons_sql(pipeline: str, limit: int = 20) -> str:
    """The most frequent quarantine reasons of `pipeline`, with their counts."""
    t = PipelineTables(pipeline)
    return f"""SELECT reason, count(*) AS records, min(batch_id) AS first_batch,
  max(batch_id) AS last_batch
FROM {t.quarantine} GROUP BY reason ORDER BY records DESC, reason LIMIT {int(limit)}"""


def _frame(result: QueryResult) -> pl.DataFrame:
    return pl.DataFrame(result.rows, schema=result.columns, orient="row", infer_schema_length=None)


def report_data(read: Read, pipeline: str) -> ReportData:
    """Everything the report page of `pipeline` shows, read once (five queries)."""
    batches = _frame(read(batch_series_sql(pipeline)))
    return ReportData(
        batches=batches.filter(pl.col("status") == "committed") if batches.height else batches,
        metrics=_frame(read(metric_series_sql(pipeline))),
        drift=_frame(read(drift_sql(pipeline, limit=1000))),
        registry=_frame(read(models_sql(pipeline))),
        reasons=_frame(read(quarantine_reasons_sql(pipeline))),
    )


def backfill_progress_sql(requested_by: str) -> str:
    """The backfill `requested_by` asked for: its id, status, rows in window and done."""
    return (
        "SELECT backfill_id, status, rows_in_window, rows_done, error FROM _backfills "
        f"WHERE requested_by = {lit(requested_by)}"
    )


def backfill_summary_sql(backfill_id: int) -> str:
    """What backfill `backfill_id` did."""
    return (
        "SELECT backfill_id, pipeline, start_at, end_at, status, rows_in_window, rows_inserted, "
        "rows_present, rows_quarantined, windows_recomputed, candidate_version FROM _backfills "
        f"WHERE backfill_id = {int(backfill_id)}"
    )
