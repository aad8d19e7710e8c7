"""The scheduled micro-batch of one pipeline, as a Prefect flow: a batch, and more while a
full batch waits, for at most the pipeline's cadence (engine/drive.py, `catch_up`). The run
is named `P-batch-N` (`P-batch-N..M` when it caught up on several) and publishes the table
artifact of its last batch; every batch is an event-worthy row in `_batches`."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated, Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.runtime import flow_run
from pydantic import Field

from tidemill.config.fields import deployment_name
from tidemill.flows.engine import artifacts
from tidemill.flows.engine.cycle import CycleReport
from tidemill.flows.engine.drive import drive
from tidemill.flows.engine.events import batch_events
from tidemill.flows.engine.runtime import Runtime, resident_runtime

PIPELINE = Annotated[
    str, Field(description="Pipeline name from tidemill.toml", pattern=r"^[a-z][a-z0-9_]*$")
]


@flow(name="micro-batch", persist_result=False, log_prints=False)
async def micro_batch(pipeline: PIPELINE) -> dict[str, Any]:
    """Run a micro-batch of `pipeline` (ingest, validate, clean, aggregate, score, learn,
    commit), and more while a full batch waits, for at most the pipeline's cadence.
    Returns the last batch's report."""
    logger = get_run_logger()
    runtime = resident_runtime()
    reports: list[CycleReport] = []

    def announce(report: CycleReport) -> None:  # in the drive's thread, after each cycle
        reports.append(report)
        for event in batch_events(report):
            if event.name is not None:
                emit_event(event=event.name, resource=event.resource, payload=event.payload)
            logger.log(event.level, "%s", event.message)

    run_id = str(flow_run.get_id() or "") or None
    try:
        await asyncio.to_thread(
            drive, runtime, pipeline, pace="catch_up", on_cycle=announce, flow_run_id=run_id
        )
    finally:  # also when later batches failed: the committed ones are shown
        committed = [r for r in reports if r.status == "committed"]
        if committed:
            await _publish(runtime, pipeline, committed)
    return asdict(committed[-1] if committed else reports[-1])


async def _publish(runtime: Runtime, pipeline: str, committed: list[CycleReport]) -> None:
    """Name the run after its batches; one table artifact (the last batch's) per run, so a
    run that caught up on many batches adds no more to the Prefect database than one."""
    run_id = flow_run.get_id()
    if run_id is not None:
        async with get_client() as client:
            name = artifacts.run_name(pipeline, [r.batch_id or 0 for r in committed])
            await client.update_flow_run(UUID(run_id), name=name)
    last = committed[-1]
    await acreate_table_artifact(
        table=artifacts.batch_rows(last),
        key=f"{deployment_name(pipeline)}-batch",
        description=f"Batch {last.batch_id} of {pipeline}"
        + (f" (this run: {len(committed)} batches)" if len(committed) > 1 else ""),
    )
    if any(r.metrics for r in committed):
        await acreate_markdown_artifact(
            markdown=await asyncio.to_thread(artifacts.metrics_markdown, runtime, pipeline),
            key=f"{deployment_name(pipeline)}-metrics",
            description=f"Latest prequential metrics of {pipeline}",
        )
