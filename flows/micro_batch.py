"""The scheduled micro-batch of one pipeline, as a Prefect flow.

Thin on purpose: it runs :func:`flows.cycle.run_cycle` on the process's resident
Runtime, names the flow run after the batch, and publishes a table artifact of what
the batch did. A failed batch fails the flow run (nothing of it was committed).

A run takes one batch, and more while a full batch is waiting, for at most the
pipeline's cadence: a backlog left by an outage (a restarted worker, a Prefect server
that was down) is caught up at once instead of at one batch per interval, which never
catches up when data arrives at close to `batch_rows / every_seconds`. Such a run is
named `P-batch-N..M` and publishes the table artifact of its last batch; every batch
is recorded in the warehouse's `_batches` table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.runtime import flow_run
from pydantic import Field

from tidemill.config import deployment_name
from tidemill.flows.cycle import BatchFailed, CycleReport, run_cycle
from tidemill.flows.resident import resident_runtime
from tidemill.flows.runtime import Runtime
from tidemill.warehouse.reports import candidates_sql, drift_sql, recent_metrics_sql


def _artifact_rows(report: CycleReport) -> list[dict[str, Any]]:
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


QUARANTINE_SPIKE = 0.2  # share of a batch's rows; above it the flow emits an event


def _markdown_table(runtime: Runtime, sql: str) -> tuple[str, int]:
    """A markdown table of read-only `sql` (on a cursor of its own) and its row count."""
    result = runtime.read(sql)
    head = "| " + " | ".join(result.columns) + " |\n|" + "---|" * len(result.columns) + "\n"
    body = "".join(
        "| " + " | ".join("" if v is None else str(v) for v in row) + " |\n" for row in result.rows
    )
    return head + body, len(result.rows)


def _markdown_metrics(runtime: Runtime, pipeline: str) -> str:
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


def _pipeline_resource(pipeline: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"tidemill.pipeline.{pipeline}",
        "prefect.resource.name": pipeline,
    }


def _run_name(pipeline: str, batches: list[int]) -> str:
    """`P-batch-N` for one batch, `P-batch-N..M` for a run that caught up on several."""
    first, last = batches[0], batches[-1]
    return f"{pipeline}-batch-{first}" + (f"..{last}" if last != first else "")


async def _name_run(name: str) -> None:
    run_id = flow_run.get_id()
    if run_id is None:
        return
    async with get_client() as client:
        await client.update_flow_run(run_id, name=name)


async def _one_batch(
    runtime: Runtime, pipeline: str, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> CycleReport:
    """Run one cycle and emit its events."""
    try:
        report = await asyncio.to_thread(
            run_cycle, runtime, pipeline, flow_run_id=str(flow_run.get_id() or "") or None
        )
    except BatchFailed as failure:
        emit_event(
            event="tidemill.batch.failed",
            resource=_pipeline_resource(pipeline),
            payload={"batch_id": failure.report.batch_id, "error": failure.report.error},
        )
        raise
    if report.rows_in and report.rows_quarantined / report.rows_in > QUARANTINE_SPIKE:
        emit_event(
            event="tidemill.quarantine.spike",
            resource=_pipeline_resource(pipeline),
            payload={
                "batch_id": report.batch_id,
                "rows_in": report.rows_in,
                "rows_quarantined": report.rows_quarantined,
            },
        )
        logger.warning(
            "batch %s: %s of %s rows quarantined",
            report.batch_id,
            report.rows_quarantined,
            report.rows_in,
        )
    for drift in report.drift:
        emit_event(
            event="tidemill.drift.detected",
            resource=_pipeline_resource(pipeline),
            payload={"batch_id": report.batch_id, **asdict(drift)},
        )
        logger.warning("batch %s: drift %s", report.batch_id, drift)
    for change in report.promotions:
        emit_event(
            event="tidemill.model.promoted",
            resource=_pipeline_resource(pipeline),
            payload={"batch_id": report.batch_id, **asdict(change)},
        )
        logger.info("batch %s: %s", report.batch_id, change.reason)
    if report.status == "committed":
        logger.info(
            "batch %s: %s in, %s accepted, %s quarantined, learned %s -> v%s %s",
            report.batch_id,
            report.rows_in,
            report.rows_accepted,
            report.rows_quarantined,
            report.rows_learned,
            report.model_version,
            report.metrics,
        )
    else:
        logger.info("%s: %s (backlog %s)", pipeline, report.status, report.backlog)
    return report


def _full_batch_waits(runtime: Runtime, pipeline: str, report: CycleReport) -> bool:
    state = runtime.pipelines.get(pipeline)
    return state is not None and report.backlog >= state.batch_rows


async def _publish(runtime: Runtime, pipeline: str, committed: list[CycleReport]) -> None:
    """Name the run after its batches; one table artifact (the last batch's) per run, so
    a run that caught up on many batches adds no more to the Prefect database than one."""
    await _name_run(_run_name(pipeline, [r.batch_id or 0 for r in committed]))
    last = committed[-1]
    await acreate_table_artifact(
        table=_artifact_rows(last),
        key=f"{deployment_name(pipeline)}-batch",
        description=f"Batch {last.batch_id} of {pipeline}"
        + (f" (this run: {len(committed)} batches)" if len(committed) > 1 else ""),
    )
    if any(r.metrics for r in committed):
        await acreate_markdown_artifact(
            markdown=await asyncio.to_thread(_markdown_metrics, runtime, pipeline),
            key=f"{deployment_name(pipeline)}-metrics",
            description=f"Latest prequential metrics of {pipeline}",
        )


@flow(name="micro-batch", persist_result=False, log_prints=False)
async def micro_batch(
    pipeline: Annotated[
        str, Field(description="Pipeline name from tidemill.toml", pattern=r"^[a-z][a-z0-9_]*$")
    ],
) -> dict[str, Any]:
    """Run a micro-batch of `pipeline` (ingest, validate, clean, aggregate, score, learn,
    commit), and more while a full batch waits, for at most the pipeline's cadence.
    Returns the last batch's report."""
    logger = get_run_logger()
    runtime = resident_runtime()
    budget = runtime.config.pipeline(pipeline).every_seconds
    started = time.monotonic()
    committed: list[CycleReport] = []
    try:
        while True:
            report = await _one_batch(runtime, pipeline, logger)
            if report.status != "committed":
                break
            committed.append(report)
            caught_up = not _full_batch_waits(runtime, pipeline, report)
            if caught_up or time.monotonic() - started >= budget:
                break
    finally:  # also when a later batch failed: the committed ones are shown
        if committed:
            await _publish(runtime, pipeline, committed)
    return asdict(committed[-1] if committed else report)
