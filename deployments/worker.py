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
import os
import signal
import threading
import time
from typing import Any
from uuid import UUID

import httpx
from prefect import Flow

from tidemill.config.fields import deployment_name
from tidemill.config.load import TidemillConfig
from tidemill.deployments import owner
from tidemill.deployments.apply import ensure_deployment
from tidemill.deployments.executor import InProcessExecutor
from tidemill.deployments.stack.supervisor import ready_file
from tidemill.flows.backfill import backfill
from tidemill.flows.engine.runtime import Runtime, install
from tidemill.flows.erasure import erasure_flow
from tidemill.flows.maintenance import maintenance
from tidemill.flows.micro_batch import micro_batch
from tidemill.settings import get_settings
from tidemill.warehouse.artifacts import ArtifactIntegrityError
from tidemill.warehouse.ledger import backfills

log = logging.getLogger("tidemill.worker")


async def register(config: TidemillConfig, pipelines: list[str]) -> dict[UUID, Flow[..., Any]]:
    """Create or update each pipeline's deployments: micro-batch/NAME on its interval,
    backfill/NAME (no schedule; a custom run with start/end from the UI or the CLI) and
    maintenance/NAME (artifact retention, every `maintenance_every_seconds`) and, for a
    pipeline with a `subject` column, erasure/NAME (no schedule; a run names the subject
    by its digest).
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
        if spec.subject is not None:  # only a pipeline that names its data subjects
            erasing = await ensure_deployment(
                erasure_flow,
                name=deployment_name(name),
                interval_seconds=None,
                parameters={"pipeline": name},
                tags=[*tags, "erasure"],
            )
            flows[erasing] = erasure_flow
    return flows


async def register_when_reachable(
    config: TidemillConfig, pipelines: list[str], *, longest_wait: float = 10.0
) -> dict[UUID, Flow[..., Any]]:
    """`register`, retried until the Prefect API answers: a worker restarted while the
    server is down (or restarting) waits for it instead of exiting."""
    wait = 0.5
    while True:
        try:
            return await register(config, pipelines)
        except (httpx.TransportError, httpx.HTTPStatusError) as error:
            if isinstance(error, httpx.HTTPStatusError) and error.response.status_code < 500:
                raise  # the request is wrong: waiting will not help
            log.warning("Prefect API unreachable (%r); registering again in %g s", error, wait)
            await asyncio.sleep(wait)
            wait = min(longest_wait, wait * 2)


def open_pipelines(runtime: Runtime, names: list[str]) -> dict[str, str]:
    """Create each pipeline's tables and load its models before the first run; returns
    why a pipeline was refused (an artifact that must not be loaded), by name. One
    refused pipeline leaves the others served: its own runs fail with the reason."""
    refused = {}
    for name in names:
        try:
            runtime.pipeline(name)
        except ArtifactIntegrityError as error:
            refused[name] = str(error)
    return refused


def _restart_on_runaway(reason: str) -> None:
    """A live SQL statement that DuckDB cannot stop (warehouse/serving/quack.py): stop
    this worker, as SIGTERM does, so the supervisor starts a fresh one; every committed
    batch is in the WAL, and an uncommitted one is run again."""
    log.error("stopping the worker: a live SQL statement %s and cannot be stopped", reason)
    os.kill(os.getpid(), signal.SIGTERM)
    threading.Timer(30.0, os._exit, args=(75,)).start()  # if the statement holds it up


def run_worker(config: TidemillConfig, pipelines: list[str] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (see module docstring)."""
    started = time.monotonic()
    names = pipelines or sorted(config.pipelines)
    for name in names:
        config.pipeline(name)
    # one INFO line per HTTP request (several per second) would bury what matters
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = get_settings()
    runtime = Runtime.open(config, settings, serve=True)
    if runtime.live is not None:
        runtime.live.on_runaway = _restart_on_runaway
    for name, why in open_pipelines(runtime, names).items():
        log.error("%s is not served: %s; its runs fail until this is fixed", name, why)
    install(runtime)
    service = owner.serve(runtime)
    ready = ready_file(config.state_dir)
    try:
        with runtime.writing() as con:
            interrupted = backfills.interrupt_running(con)
        if interrupted:
            log.warning(
                "%d backfill(s) were left running by a stopped worker: marked interrupted",
                interrupted,
            )
        flows = asyncio.run(register_when_reachable(config, names))
        executor = InProcessExecutor(
            flows, poll_interval=0.5, max_lateness=settings.max_lateness_seconds
        )
        ready.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        ready.write_text("\n".join(f"{i} {f.name}" for i, f in flows.items()) + "\n")
        log.info(
            "worker ready in %.1f s: %s",
            time.monotonic() - started,
            ", ".join(f"{f.name} ({i})" for i, f in flows.items()),
        )
        executor.serve()
    finally:
        ready.unlink(missing_ok=True)
        service.close()
        install(None)
        runtime.close()
