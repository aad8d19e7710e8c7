"""The long-lived worker: owns the warehouse and executes scheduled runs in-process.

It opens the DuckDB file once, keeps every pipeline's model in memory, serves
read-only SQL on a local socket, registers one deployment per pipeline (interval
from the config, concurrency 1 with CANCEL_NEW, typed parameters, tags) and runs
their scheduled flow runs in this process until SIGINT/SIGTERM. The Prefect
settings (PREFECT_API_URL, ...) must be in the environment before this module is
imported; `tidemill up` starts it that way.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import Flow

from deployments import owner
from deployments.executor import InProcessExecutor, ensure_deployment
from deployments.owner import deployment_name
from flows.backfill import backfill
from flows.maintenance import maintenance
from flows.micro_batch import micro_batch
from flows.resident import install
from flows.runtime import Runtime
from tidemill.config import TidemillConfig
from tidemill.settings import get_settings
from warehouse import backfills

log = logging.getLogger("tidemill.worker")
READY_FILE = "worker.ready"


def ready_file(state_dir: Path) -> Path:
    """Touched once the worker serves queries and its deployments exist."""
    return state_dir / "run" / READY_FILE


async def register(config: TidemillConfig, pipelines: list[str]) -> dict[UUID, Flow[..., Any]]:
    """Create or update each pipeline's deployments: micro-batch/NAME on its interval,
    backfill/NAME (no schedule; a custom run with start/end from the UI or the CLI) and
    maintenance/NAME (artifact retention, every `maintenance_every_seconds`).
    Returns deployment id -> the flow this worker runs for it."""
    flows: dict[UUID, Flow[..., Any]] = {}
    for name in pipelines:
        spec = config.pipeline(name)
        tags = ["tidemill", f"pipeline:{name}"]
        scheduled = await ensure_deployment(
            micro_batch,
            name=deployment_name(name),
            interval_seconds=spec.every_seconds,
            parameters={"pipeline": name},
            tags=tags,
        )
        on_demand = await ensure_deployment(
            backfill,
            name=deployment_name(name),
            interval_seconds=None,
            parameters={"pipeline": name, "retrain": False},
            tags=[*tags, "backfill"],
        )
        housekeeping = await ensure_deployment(
            maintenance,
            name=deployment_name(name),
            interval_seconds=get_settings().maintenance_every_seconds,
            parameters={"pipeline": name},
            tags=[*tags, "maintenance"],
        )
        flows[scheduled], flows[on_demand] = micro_batch, backfill
        flows[housekeeping] = maintenance
    return flows


def run_worker(config: TidemillConfig, pipelines: list[str] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (see module docstring)."""
    names = pipelines or sorted(config.pipelines)
    for name in names:
        config.pipeline(name)
    settings = get_settings()
    runtime = Runtime.open(config, settings)
    for name in names:
        runtime.pipeline(name)  # tables exist (and models load) before the first run
    install(runtime)
    service = owner.serve(runtime)
    ready = ready_file(config.state_dir)
    try:
        with runtime.lock:
            interrupted = backfills.interrupt_running(runtime.con)
        if interrupted:
            log.warning(
                "%d backfill(s) were left running by a stopped worker: marked interrupted",
                interrupted,
            )
        flows = asyncio.run(register(config, names))
        executor = InProcessExecutor(
            flows, poll_interval=0.5, max_lateness=settings.max_lateness_seconds
        )
        ready.write_text("\n".join(f"{i} {f.name}" for i, f in flows.items()) + "\n")
        log.info("worker ready: %s", ", ".join(f"{f.name} ({i})" for i, f in flows.items()))
        executor.serve()
    finally:
        ready.unlink(missing_ok=True)
        service.close()
        install(None)
        runtime.close()
