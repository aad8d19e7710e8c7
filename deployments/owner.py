"""What the owning process (worker or `tidemill run`) offers other processes.

`serve(runtime)` starts the socket service with read-only SQL plus the commands below;
`commands(runtime)` is also what `tidemill` runs in-process when no owner is running,
so a command has one implementation whoever carries it out.
"""

from __future__ import annotations

from typing import Any

from deployments.query_service import Command, QueryService, Refused
from flows.runtime import Runtime
from warehouse.registry import ArtifactIntegrityError, RegistryError


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


def commands(runtime: Runtime) -> dict[str, Command]:
    """Command name -> handler, for the socket service and for in-process use."""
    return {"champion": _champion(runtime)}


def serve(runtime: Runtime) -> QueryService:
    """Start serving SQL and commands for `runtime` on its state folder's socket."""
    return QueryService(runtime.state_dir, runtime.con, runtime.lock, commands(runtime))
