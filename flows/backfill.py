"""A manual backfill as a Prefect flow: a custom run of `backfill/<pipeline>` from the UI
(typed start/end form) or from `tidemill backfill`.

Thin: it runs :func:`flows.backfill_window.run_backfill` on the process's resident
Runtime (so live micro-batches interleave with its chunks), keeps a progress artifact
current, and ends with a table artifact of the outcome.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.runtime import flow_run
from pydantic import Field

from tidemill.config import deployment_name
from tidemill.flows.backfill_window import run_backfill
from tidemill.flows.resident import resident_runtime


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


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
        _naive_utc(start),
        _naive_utc(end),
        retrain=retrain,
        requested_by=f"prefect flow run {flow_run.get_id()}",
        progress=progress,
    )
    await aupdate_progress_artifact(artifact, 100.0)
    rows = [{"field": k, "value": v} for k, v in asdict(report).items() if k != "candidate_metrics"]
    rows += [
        {"field": f"candidate {k}", "value": round(v, 5)}
        for k, v in report.candidate_metrics.items()
    ]
    await acreate_table_artifact(
        table=rows, key=key, description=f"Backfill {report.backfill_id} of {pipeline}"
    )
    logger.info(
        "backfill %s of %s: %s in window, %s inserted, %s already present, %s quarantined, "
        "%s windows recomputed, candidate %s",
        report.backfill_id,
        pipeline,
        report.rows_in_window,
        report.rows_inserted,
        report.rows_present,
        report.rows_quarantined,
        report.windows_recomputed,
        report.candidate_version,
    )
    return asdict(report)
