"""Creating and updating the pipelines' Prefect deployments, and only when their
definition changed (applying re-anchors the schedule and drops future runs)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.exceptions import ObjectNotFound


async def ensure_deployment(
    flow: Flow[..., Any],
    *,
    name: str,
    interval_seconds: float | None,
    parameters: dict[str, Any],
    tags: list[str],
    paused: bool = False,
) -> UUID:
    """Create or update the deployment `<flow name>/<name>`; return its id.

    The deployment has one interval schedule (none when `interval_seconds` is None:
    runs only when asked, e.g. a backfill), at most one active run
    (collision strategy CANCEL_NEW: a run proposed while another is active is
    cancelled, never queued), a parameter schema taken from the flow's
    signature (the UI's run form) and no work pool, so no worker picks its
    runs up: only an `InProcessExecutor` serving its id executes them.
    Re-applying a changed definition (code, parameters, schedule, tags, paused state)
    replaces it; an unchanged one is left alone. Prefect deletes a deployment's future
    runs and re-anchors its schedule at "now" whenever it is applied, so applying it at
    every worker start would leave a pipeline without runs until the scheduler's next
    loop, and push a 10-minute job (maintenance) back by 10 minutes at every restart:
    under a worker restarted more often it would never run.
    """
    deployment = await flow.ato_deployment(
        name=name,
        interval=dt.timedelta(seconds=interval_seconds) if interval_seconds else None,
        parameters=parameters,
        tags=tags,
        paused=paused,
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
        ),
        # module.function rather than a path relative to the current directory
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    # The version Prefect shows is the flow file's hash; ours also covers the rest of
    # the definition, so an equal version means nothing to apply.
    deployment.version = _definition_hash(deployment)
    async with get_client() as client:
        try:
            existing = await client.read_deployment_by_name(f"{flow.name}/{name}")
        except ObjectNotFound:
            existing = None
    if existing is not None and existing.version == deployment.version:
        return existing.id
    return await deployment.aapply()


def _definition_hash(deployment: RunnerDeployment) -> str:
    """A hash of everything `ensure_deployment` sets, but the moment it was built."""
    definition = deployment.model_dump(mode="json")  # version: the flow file's hash
    for entry in definition.get("schedules") or []:
        entry["schedule"].pop("anchor_date", None)
    text = json.dumps(definition, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]
