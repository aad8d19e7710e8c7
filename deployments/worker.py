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
from uuid import UUID

from deployments import owner
from deployments.executor import InProcessExecutor, ensure_deployment
from flows.micro_batch import micro_batch
from flows.resident import install
from flows.runtime import Runtime
from tidemill.config import TidemillConfig
from tidemill.settings import get_settings

log = logging.getLogger("tidemill.worker")
READY_FILE = "worker.ready"


def ready_file(state_dir: Path) -> Path:
    """Touched once the worker serves queries and its deployments exist."""
    return state_dir / "run" / READY_FILE


def deployment_name(pipeline: str) -> str:
    """Name of a pipeline's micro-batch deployment (shown as micro-batch/NAME in the UI)."""
    return pipeline.replace("_", "-")


async def register(config: TidemillConfig, pipelines: list[str]) -> dict[UUID, str]:
    """Create or update the micro-batch deployment of each pipeline; id -> pipeline."""
    ids = {}
    for name in pipelines:
        spec = config.pipeline(name)
        deployment_id = await ensure_deployment(
            micro_batch,
            name=deployment_name(name),
            interval_seconds=spec.every_seconds,
            parameters={"pipeline": name},
            tags=["tidemill", f"pipeline:{name}"],
        )
        ids[deployment_id] = name
    return ids


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
        ids = asyncio.run(register(config, names))
        executor = InProcessExecutor(
            {deployment_id: micro_batch for deployment_id in ids},
            poll_interval=0.5,
            max_lateness=settings.max_lateness_seconds,
        )
        ready.write_text("\n".join(f"{i} {n}" for i, n in ids.items()) + "\n")
        log.info("worker ready: %s", ", ".join(f"{n} ({i})" for i, n in ids.items()))
        executor.serve()
    finally:
        ready.unlink(missing_ok=True)
        service.close()
        install(None)
        runtime.close()
