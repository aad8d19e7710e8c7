"""Artifact maintenance of one pipeline, as a Prefect flow (`maintenance/<pipeline>`,
every `maintenance_every_seconds`).

It runs the engine's maintenance (engine/maintain.py: micro-batches interleave with the
pruning chunks), logs what was removed and publishes it as a markdown artifact, with the
pipeline's charts (see `tidemill report`) inlined; the whole report page is written to
`<state>/reports/P.html`.
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

from tidemill.config.fields import deployment_name
from tidemill.flows.engine import artifacts
from tidemill.flows.engine.maintain import maintain
from tidemill.flows.engine.runtime import resident_runtime
from tidemill.tasks.judge.retention import RetentionPolicy
from tidemill.warehouse.retention import GRACE

DEFAULTS = RetentionPolicy()


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
    policy = RetentionPolicy(keep_last=keep_last, hourly_hours=hourly_hours, daily_days=daily_days)
    report = await asyncio.to_thread(
        maintain,
        runtime,
        pipeline,
        requested_by=f"prefect flow run {flow_run.get_id()}",
        policy=policy,
        grace=timedelta(minutes=grace_minutes),
    )
    charts = await asyncio.to_thread(artifacts.charts_markdown, runtime, pipeline)
    await acreate_markdown_artifact(
        markdown=artifacts.maintenance_markdown(report, policy) + charts,
        key=f"{deployment_name(pipeline)}-maintenance",
        description=f"Artifact maintenance of {pipeline}",
    )
    logger.info("%s", artifacts.maintenance_summary(report))
    return asdict(report)
