"""Erase a data subject, as a Prefect flow (`erasure/<pipeline>`, no schedule): the engine
(engine/erase.py) removes their rows everywhere and rebuilds what models learned from them.

A run names the subject by its digest (the HMAC the audit row keeps; `tidemill erase
PIPELINE --subject VALUE --digest-only` prints it), never by its value: Prefect stores
every run's parameters in its database, and an erasure must not leave the value it erases
there.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.runtime import flow_run
from pydantic import Field

from tidemill.config.fields import deployment_name
from tidemill.flows.engine import artifacts
from tidemill.flows.engine.erase import ErasureError, erase_subject, find_subject
from tidemill.flows.engine.runtime import resident_runtime


@flow(name="erasure", persist_result=False, log_prints=False)
async def erasure_flow(
    pipeline: Annotated[
        str, Field(description="Pipeline name from tidemill.toml", pattern=r"^[a-z][a-z0-9_]*$")
    ],
    subject_digest: Annotated[
        str,
        Field(
            description="HMAC of the subject, never the value itself: printed by "
            "`tidemill erase PIPELINE --subject VALUE --digest-only`",
            pattern=r"^[0-9a-fA-F]{64}$",
        ),
    ],
    requested_by: Annotated[
        str, Field(min_length=1, description="Who asked (kept in the _erasures audit row)")
    ],
) -> dict[str, Any]:
    """Erase a data subject from `pipeline` (rows, aggregates, and models rebuilt without
    them), named by digest. A digest no stored row has erases nothing and says so."""
    logger = get_run_logger()
    runtime = resident_runtime()
    config = runtime.config.pipeline(pipeline)
    if config.subject is None:
        raise ErasureError(f"pipeline {pipeline} declares no `subject` column")
    value = await asyncio.to_thread(find_subject, runtime, pipeline, config.subject, subject_digest)
    if value is None:
        logger.warning(
            "%s: no stored row has subject %s…: nothing erased", pipeline, subject_digest[:16]
        )
        return {"pipeline": pipeline, "found": False}
    report = await asyncio.to_thread(
        erase_subject,
        runtime,
        pipeline,
        config.subject,
        value,
        requested_by=f"{requested_by} (prefect flow run {flow_run.get_id()})",
    )
    await acreate_markdown_artifact(
        markdown=artifacts.erasure_markdown(report),
        key=f"{deployment_name(pipeline)}-erasure",
        description=f"Erasure {report.erasure_id} of {pipeline}",
    )
    logger.info(
        "%s: erasure %s removed %s rows, rebuilt %s model versions",
        pipeline,
        report.erasure_id,
        report.rows_raw,
        report.versions_rebuilt,
    )
    return {"found": True, **asdict(report)}
