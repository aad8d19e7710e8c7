"""Reaching the warehouse from outside the owning process, whatever is running.

Reads try, in order: the owner's socket (fresh, consistent), the warehouse file opened
read-only (works when nothing owns it), the published snapshot (works always, as fresh
as its last publication). Commands go to the owner, or run here on the file when no
process owns it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from deployments.query_service import (
    OwnerUnavailable,
    QueryRefused,
    Refused,
    ask_owner,
    call_owner,
)
from tidemill.config import TidemillConfig
from warehouse.connection import database_path, open_readonly
from warehouse.readonly import QueryResult, run_readonly
from warehouse.snapshot import snapshot_path


class NothingToRead(FileNotFoundError):
    """There is no warehouse yet."""


def read_sql(state_dir: Path, sql: str, *, snapshot: bool = False) -> tuple[QueryResult, str]:
    """Run read-only `sql`; returns (result, where it ran: owner | file | snapshot)."""
    if not snapshot:
        try:
            return ask_owner(state_dir, sql), "owner"
        except OwnerUnavailable:
            pass
        database = database_path(state_dir)
        if database.exists():
            try:
                con = open_readonly(database)
            except duckdb.IOException:
                pass  # owned by a process that serves no socket: fall back to the snapshot
            else:
                with con:
                    return run_readonly(con, sql), "file"
    published = snapshot_path(state_dir)
    if not published.exists():
        raise NothingToRead(
            f"no warehouse in {state_dir} yet: run `tidemill run PIPELINE --drain` or `make run`"
        )
    with open_readonly(published) as con:
        return run_readonly(con, sql), "snapshot"


def command(config: TidemillConfig, op: str, **payload: Any) -> dict[str, Any]:
    """Carry out owner command `op` (see deployments/owner.py) in the owner, or here."""
    request = {"op": op, **payload}
    try:
        return call_owner(config.state_dir, request)
    except OwnerUnavailable:
        pass
    from deployments.owner import commands
    from flows.runtime import Runtime

    runtime = Runtime.open(config)
    try:
        return commands(runtime)[op](request)
    except Refused as error:
        raise QueryRefused(str(error)) from None
    finally:
        runtime.close()
