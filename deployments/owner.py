"""What the owning process (worker or `tidemill run`) offers other processes.

`serve(runtime)` starts the owner socket with the commands below;
`commands(runtime)` is also what `tidemill` runs in-process when no owner is running,
so a command has one implementation whoever carries it out.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect.client.schemas.objects import FlowRun

from tidemill import utc
from tidemill.config.fields import deployment_name
from tidemill.deployments.owner_socket import Command, OwnerSocket, Refused
from tidemill.flows.engine.erase import ErasureError, erase_subject
from tidemill.flows.engine.maintain import maintain as maintain_now
from tidemill.flows.engine.replay import ReplayError, replay_model
from tidemill.flows.engine.runtime import Runtime
from tidemill.keys import get_key
from tidemill.tasks.records.pii import protected_changes
from tidemill.tasks.sources.loader import source_for
from tidemill.warehouse import artifacts
from tidemill.warehouse.artifacts import ArtifactIntegrityError
from tidemill.warehouse.ledger import backfills
from tidemill.warehouse.quarantine import Fix, ReadmitRefused
from tidemill.warehouse.quarantine import readmit as put_back
from tidemill.warehouse.registry import RegistryError


def _champion(runtime: Runtime) -> Command:
    def change(request: dict[str, Any]) -> dict[str, Any]:
        try:
            version = runtime.change_champion(
                str(request["pipeline"]),
                int(request["version"]) if request.get("version") is not None else None,
                action=str(request["action"]),
                actor=str(request["actor"]),
                reason=str(request["reason"]),
            )
        except (RegistryError, ArtifactIntegrityError) as error:
            raise Refused(str(error)) from None
        return {"version": version.version, "rows_seen": version.rows_seen}

    return change


def _backfill(runtime: Runtime) -> Command:
    """Start a run of the pipeline's backfill deployment; this worker executes it."""

    def start(request: dict[str, Any]) -> dict[str, Any]:
        from prefect.deployments import run_deployment

        pipeline = str(request["pipeline"])
        with runtime.writing() as con:
            other = backfills.running(con, pipeline)
        if other is not None:
            raise Refused(backfills.refusal(other))
        flow_run: FlowRun = run_deployment(  # type: ignore[assignment]  # sync call: a FlowRun
            name=f"backfill/{deployment_name(pipeline)}",
            parameters={
                "pipeline": pipeline,
                "start": request["start"],
                "end": request["end"],
                "retrain": bool(request.get("retrain", False)),
            },
            timeout=0,
            tags=["tidemill", f"pipeline:{pipeline}", "backfill"],
        )
        return {"flow_run_id": str(flow_run.id), "flow_run_name": flow_run.name}

    return start


def _replay_model(runtime: Runtime) -> Command:
    """Rebuild a version from its batches and compare; reads on a cursor of its own, so
    live batches go on meanwhile (it takes no lock)."""

    def replay(request: dict[str, Any]) -> dict[str, Any]:
        pipeline = str(request["pipeline"])
        state = runtime.pipeline(pipeline)
        if state is None:
            raise Refused(f"{pipeline} has no tables yet")
        try:
            with runtime.reader() as cursor:
                report = replay_model(
                    cursor, state.config, int(request["version"]), runtime.state_dir
                )
        except (ReplayError, ArtifactIntegrityError) as error:
            raise Refused(str(error)) from None
        return dataclasses.asdict(report)

    return replay


def _maintain(runtime: Runtime) -> Command:
    """Prune artifacts by the retention policy and sweep orphans, now."""

    def maintain(request: dict[str, Any]) -> dict[str, Any]:
        pipeline = str(request["pipeline"])
        if runtime.pipeline(pipeline) is None:
            raise Refused(f"{pipeline} has no tables yet")
        report = maintain_now(runtime, pipeline, requested_by=str(request["actor"]))
        return {
            k: str(v) if not isinstance(v, int) else v
            for k, v in dataclasses.asdict(report).items()
        }

    return maintain


def _readmit(runtime: Runtime) -> Command:
    """Put corrected quarantined records back into the inbox (the next batch validates
    them); records already re-admitted are left alone. Corrected personal fields are
    pseudonymised or masked by the pipeline's pii rules first."""

    def readmit(request: dict[str, Any]) -> dict[str, Any]:
        pipeline = str(request["pipeline"])
        state = runtime.pipeline(pipeline)
        if state is None:
            raise Refused(f"{pipeline} has no tables yet")
        fmt = source_for(state.config, runtime.state_dir).record_format
        key = get_key(runtime.state_dir, "pii") if state.config.pii else b""
        fixes = [
            Fix(int(f["id"]), protected_changes(state.config, dict(f.get("changes") or {}), key))
            for f in request["fixes"]
        ]
        with runtime.writing() as con:
            try:
                done = put_back(
                    con,
                    state.config,
                    fmt,
                    fixes,
                    actor=str(request["actor"]),
                    now=utc.now(),
                )
            except ReadmitRefused as error:
                raise Refused(str(error)) from None
            runtime.publication.changed()
        return dataclasses.asdict(done)

    return readmit


def _erase(runtime: Runtime) -> Command:
    """Erase a data subject (the CLI sends the value's stored form, never logged)."""

    def erase(request: dict[str, Any]) -> dict[str, Any]:
        pipeline = str(request["pipeline"])
        state = runtime.pipeline(pipeline)
        if state is None:
            raise Refused(f"{pipeline} has no tables yet: nothing to erase")
        column = state.config.subject
        if column is None:
            raise Refused(
                f"pipeline {pipeline} declares no `subject` column: set "
                f"pipelines.{pipeline}.subject to the column that names a data subject"
            )
        try:
            report = erase_subject(
                runtime,
                pipeline,
                column,
                str(request["stored_value"]),
                requested_by=str(request["actor"]),
            )
        except (ErasureError, ArtifactIntegrityError) as error:
            raise Refused(str(error)) from None
        return dataclasses.asdict(report)

    return erase


def _sign(runtime: Runtime) -> Command:
    """Sign the artifacts of registry rows that have no signature (or all, after a key
    rotation); files are hashed, never unpickled."""

    def sign(request: dict[str, Any]) -> dict[str, Any]:
        pipeline = str(request["pipeline"])
        with runtime.writing() as con:
            signed = artifacts.sign_versions(
                con, runtime.state_dir, pipeline, resign=bool(request.get("resign"))
            )
        return {"signed": signed.signed, "refused": {str(k): v for k, v in signed.refused.items()}}

    return sign


def commands(runtime: Runtime) -> dict[str, Command]:
    """Command name -> handler, for the socket service and for in-process use."""
    return {
        "champion": _champion(runtime),
        "backfill": _backfill(runtime),
        "replay_model": _replay_model(runtime),
        "maintain": _maintain(runtime),
        "readmit": _readmit(runtime),
        "erase": _erase(runtime),
        "sign": _sign(runtime),
    }


def serve(runtime: Runtime) -> OwnerSocket:
    """Start serving commands for `runtime` on its state folder's socket."""
    return OwnerSocket(runtime.state_dir, commands(runtime))
