"""What the flows publish to Prefect (table and markdown artifacts, run names), built from
what the engine did: the content only, no Prefect (the flows post it)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from tidemill.durable import write_atomic
from tidemill.flows.engine.backfill import BackfillReport
from tidemill.flows.engine.cycle import CycleReport
from tidemill.flows.engine.erase import ErasureReport
from tidemill.flows.engine.runtime import Runtime
from tidemill.tasks.judge.retention import RetentionPolicy
from tidemill.tasks.report.charts import page_charts
from tidemill.tasks.report.page import data_url, render_page
from tidemill.warehouse.reports import (
    candidates_sql,
    drift_sql,
    recent_metrics_sql,
    report_data,
)
from tidemill.warehouse.retention import MaintenanceReport


def batch_rows(report: CycleReport) -> list[dict[str, Any]]:
    """The table artifact of one batch: what it took, learned and scored, and its step times."""
    rows: list[dict[str, Any]] = [
        {"field": "batch_id", "value": report.batch_id},
        {"field": "rows in", "value": report.rows_in},
        {"field": "rows accepted", "value": report.rows_accepted},
        {"field": "rows quarantined", "value": report.rows_quarantined},
        {"field": "rows learned", "value": report.rows_learned},
        {"field": "model version", "value": report.model_version},
        {"field": "champion", "value": report.champion},
        {"field": "batch rows limit", "value": report.batch_rows_limit},
        {"field": "scored by version", "value": report.scored_by},
        {"field": "backlog", "value": report.backlog},
    ]
    rows += [
        {"field": f"{name} {k}", "value": round(v, 5)}
        for name, metrics in report.candidates.items()
        for k, v in metrics.items()
    ]
    rows += [{"field": f"{k} ms", "value": round(v, 2)} for k, v in report.timings_ms.items()]
    return rows


def run_name(pipeline: str, batches: list[int]) -> str:
    """`P-batch-N` for one batch, `P-batch-N..M` for a run that caught up on several."""
    first, last = batches[0], batches[-1]
    return f"{pipeline}-batch-{first}" + (f"..{last}" if last != first else "")


def _markdown_table(runtime: Runtime, sql: str) -> tuple[str, int]:
    """A markdown table of read-only `sql` (on a cursor of its own) and its row count."""
    result = runtime.read(sql)
    head = "| " + " | ".join(result.columns) + " |\n|" + "---|" * len(result.columns) + "\n"
    body = "".join(
        "| " + " | ".join("" if v is None else str(v) for v in row) + " |\n" for row in result.rows
    )
    return head + body, len(result.rows)


def metrics_markdown(runtime: Runtime, pipeline: str) -> str:
    """Candidates, recent prequential metrics and drift events of `pipeline`."""
    candidates, _ = _markdown_table(runtime, candidates_sql(pipeline))
    metrics, _ = _markdown_table(runtime, recent_metrics_sql(pipeline))
    drift, n_drift = _markdown_table(runtime, drift_sql(pipeline))
    return (
        f"## {pipeline}: champion and challengers\n\n"
        "Every candidate scores each batch before learning it; metrics over the last 20 "
        "batches.\n\n"
        + candidates
        + "\n## Drift events\n\n"
        + (drift if n_drift else "None so far.\n")
        + "\n## Prequential metrics per batch\n\n"
        + metrics
        + f"\nFull history: `tidemill query \"SELECT * FROM ml.batch_metrics WHERE pipeline = '{pipeline}'\"`\n"
    )


def maintenance_markdown(report: MaintenanceReport, policy: RetentionPolicy) -> str:
    """What a maintenance run removed, and what the policy keeps."""
    rows = [
        ("artifacts pruned", report.artifacts_pruned),
        ("artifacts kept", report.artifacts_kept),
        ("orphans removed", report.orphans_removed),
        ("unfinished writes removed", report.temp_files_removed),
        ("MiB freed", round(report.bytes_freed / 2**20, 2)),
    ]
    return (
        f"## {report.pipeline}: artifact maintenance run {report.run_id}\n\n"
        f"Kept: heads, promoted and rolled-back versions, the last {policy.keep_last}, "
        f"one per hour for {policy.hourly_hours} h and one per day for {policy.daily_days} d.\n\n"
        "| | |\n|---|---|\n"
        + "".join(f"| {name} | {value} |\n" for name, value in rows)
        + f'\nHistory: `tidemill query "SELECT * FROM _maintenance_runs WHERE pipeline = '
        f"'{report.pipeline}' ORDER BY run_id DESC\"`\n"
    )


def charts_markdown(runtime: Runtime, pipeline: str) -> str:
    """The charts of `pipeline` as markdown images, and the report page written beside the
    warehouse (its path ends the section): read once, drawn once."""
    data = report_data(runtime.read, pipeline)
    drawn = page_charts(data)
    page = runtime.state_dir / "reports" / f"{pipeline}.html"
    page.parent.mkdir(exist_ok=True)
    text = render_page(pipeline, data, drawn, source="owner").encode()
    write_atomic(page, lambda handle: handle.write(text))
    images = "".join(f"![{title}]({data_url(png)})\n\n" for title, png in drawn)
    return f"\n## Charts\n\n{images}Full report: `{page}` (`tidemill report {pipeline}`)\n"


def erasure_markdown(report: ErasureReport) -> str:
    """What an erasure removed and rebuilt (the subject by its digest, never its value)."""
    rows = [
        ("raw rows", report.rows_raw),
        ("clean rows", report.rows_clean),
        ("quarantined records", report.rows_quarantine),
        ("records waiting in the inbox", report.rows_inbox),
        ("predictions", report.rows_predictions),
        ("aggregate windows recomputed", report.windows_recomputed),
        ("model versions rebuilt", report.versions_rebuilt),
        ("artifacts deleted", report.artifacts_deleted),
        ("file and snapshot rewritten", "yes" if report.file_rewritten else "no"),
    ]
    heads = ", ".join(f"{c} v{v}" for c, v in report.heads.items()) or "unchanged"
    return (
        f"## {report.pipeline}: erasure {report.erasure_id}\n\n"
        f"Subject digest `{report.subject_digest[:16]}…`; models now: {heads}.\n\n"
        "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    )


def backfill_rows(report: BackfillReport) -> list[dict[str, Any]]:
    """The table artifact of a backfill: its report, the candidate's metrics last."""
    rows = [{"field": k, "value": v} for k, v in asdict(report).items() if k != "candidate_metrics"]
    rows += [
        {"field": f"candidate {k}", "value": round(v, 5)}
        for k, v in report.candidate_metrics.items()
    ]
    return rows


def backfill_summary(report: BackfillReport) -> str:
    """A backfill's outcome on one line (its run's log)."""
    return (
        f"backfill {report.backfill_id} of {report.pipeline}: {report.rows_in_window} in "
        f"window, {report.rows_inserted} inserted, {report.rows_present} already present, "
        f"{report.rows_quarantined} quarantined, {report.windows_recomputed} windows "
        f"recomputed, candidate {report.candidate_version}"
    )


def maintenance_summary(report: MaintenanceReport) -> str:
    """A maintenance run's outcome on one line (its run's log)."""
    return (
        f"maintenance {report.run_id} of {report.pipeline}: {report.artifacts_pruned} "
        f"artifacts pruned, {report.artifacts_kept} kept, {report.orphans_removed} orphans and "
        f"{report.temp_files_removed} unfinished writes removed, "
        f"{report.bytes_freed / 2**20:.1f} MiB freed"
    )
