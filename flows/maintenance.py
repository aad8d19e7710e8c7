"""Artifact maintenance of one pipeline, as a Prefect flow (`maintenance/<pipeline>`,
every `maintenance_every_seconds`).

Thin: it runs :func:`warehouse.retention.run_maintenance` on the process's resident
Runtime under its lock (so micro-batches interleave with the pruning chunks), logs what
was removed and publishes it as a markdown artifact, with the pipeline's charts (see
`tidemill report`) inlined; the whole report page is written to `<state>/reports/P.html`.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import timedelta
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.runtime import flow_run
from pydantic import Field

from tidemill.config import deployment_name
from tidemill.durable import write_atomic
from tidemill.flows.resident import resident_runtime
from tidemill.flows.runtime import Runtime
from tidemill.tasks.judge.retention import RetentionPolicy
from tidemill.tasks.report.charts import page_charts
from tidemill.tasks.report.page import data_url, render_page
from tidemill.warehouse.reports import report_data
from tidemill.warehouse.retention import GRACE, MaintenanceReport, run_maintenance

DEFAULTS = RetentionPolicy()


def _markdown(report: MaintenanceReport, policy: RetentionPolicy) -> str:
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


def _charts_markdown(runtime: Runtime, pipeline: str) -> str:
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


@flow(name="maintenance", persist_result=False, log_prints=False)
async def maintenance(
    pipeline: Annotated[
        str, Field(description="Pipeline name from tidemill.toml", pattern=r"^[a-z][a-z0-9_]*$")
    ],
    keep_last: Annotated[
        int, Field(ge=1, description="Newest versions whose artifact is kept, per candidate")
    ] = DEFAULTS.keep_last,
    hourly_hours: Annotated[
        int, Field(ge=0, description="Keep the latest version of each hour for this many hours")
    ] = DEFAULTS.hourly_hours,
    daily_days: Annotated[
        int, Field(ge=0, description="Keep the latest version of each day for this many days")
    ] = DEFAULTS.daily_days,
    grace_minutes: Annotated[
        float, Field(ge=1, description="Leave unregistered files younger than this alone")
    ] = GRACE.total_seconds() / 60,
) -> dict[str, Any]:
    """Delete the artifact files of `pipeline` the retention policy lets go, and leftover
    files of crashed batches. Returns the maintenance report."""
    logger = get_run_logger()
    runtime = resident_runtime()
    runtime.config.pipeline(pipeline)  # an unknown name fails here, naming the known ones
    policy = RetentionPolicy(keep_last=keep_last, hourly_hours=hourly_hours, daily_days=daily_days)
    report = await asyncio.to_thread(
        run_maintenance,
        runtime.con,
        runtime.state_dir,
        pipeline,
        policy,
        requested_by=f"prefect flow run {flow_run.get_id()}",
        lock=runtime.lock,
        grace=timedelta(minutes=grace_minutes),
    )
    charts_markdown = await asyncio.to_thread(_charts_markdown, runtime, pipeline)
    await acreate_markdown_artifact(
        markdown=_markdown(report, policy) + charts_markdown,
        key=f"{deployment_name(pipeline)}-maintenance",
        description=f"Artifact maintenance of {pipeline}",
    )
    logger.info(
        "maintenance %s of %s: %s artifacts pruned, %s kept, %s orphans and %s unfinished "
        "writes removed, %.1f MiB freed",
        report.run_id,
        pipeline,
        report.artifacts_pruned,
        report.artifacts_kept,
        report.orphans_removed,
        report.temp_files_removed,
        report.bytes_freed / 2**20,
    )
    return asdict(report)
