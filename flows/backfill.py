"""A manual backfill as a Prefect flow: a custom run of `backfill/<pipeline>` from the UI
(typed start/end form) or from `tidemill backfill`.

It runs the engine's backfill (engine/backfill.py) on the process's resident Runtime (so
live micro-batches interleave with its chunks), keeps a progress artifact current, and
ends with a table artifact of the outcome.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.runtime import flow_run
from pydantic import Field

from tidemill import utc
from tidemill.config.fields import deployment_name
from tidemill.flows.engine.artifacts import backfill_rows, backfill_summary
from tidemill.flows.engine.backfill import run_backfill
from tidemill.flows.engine.runtime import resident_runtime


@flow(name="backfill", persist_result=False, log_prints=False)
async def backfill(
    pipeline: Annotated[
        str, Field(description="Pipeline name from tidemill.toml", pattern=r"^[a-z][a-z0-9_]*$")
    ],
    start: Annotated[datetime, Field(description="Window start, inclusive (event time, UTC)")],
    end: Annotated[datetime, Field(description="Window end, exclusive (event time, UTC)")],
    retrain: Annotated[
        bool, Field(description="Also train a candidate model on the window (champion untouched)")
    ] = False,
) -> dict[str, Any]:
    """Re-read the source for [start, end), insert what is missing, recompute the windows
    it touches, and optionally train a candidate model. Returns the backfill report."""
    logger = get_run_logger()
    runtime = resident_runtime()
    loop = asyncio.get_running_loop()
    key = f"{deployment_name(pipeline)}-backfill"
    artifact = await acreate_progress_artifact(0.0, key=key, description=f"Backfill of {pipeline}")

    def progress(done: int, total: int) -> None:
        share = 100.0 * done / total if total else 100.0
        asyncio.run_coroutine_threadsafe(aupdate_progress_artifact(artifact, share), loop)

    report = await asyncio.to_thread(
        run_backfill,
        runtime,
        pipeline,
        utc.naive(start),
        utc.naive(end),
        retrain=retrain,
        requested_by=f"prefect flow run {flow_run.get_id()}",
        progress=progress,
    )
    await aupdate_progress_artifact(artifact, 100.0)
    await acreate_table_artifact(
        table=backfill_rows(report),
        key=key,
        description=f"Backfill {report.backfill_id} of {pipeline}",
    )
    logger.info("%s", backfill_summary(report))
    return asdict(report)
