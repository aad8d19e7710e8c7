"""Reaching the warehouse from outside the owning process, whatever is running.

Reads try, in order: the owner's socket (fresh, consistent), the warehouse file opened
read-only (works when nothing owns it), the published snapshot (works always, as fresh
as its last publication). Commands go to the owner, or run here on the file when no
process owns it.

Every path is read-only three times over (warehouse/serving/readonly.py): the statement
allowlist, a READ ONLY transaction, and a locked-down connection (the owner's, or one
opened here read-only without file or extension access).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tidemill.config.load import TidemillConfig
from tidemill.deployments.query_service import (
    QUERY_TIMEOUT_SECONDS,
    OwnerUnavailable,
    QueryRefused,
    Refused,
    ask_owner,
    call_owner,
)
from tidemill.errors import TidemillError
from tidemill.warehouse.connection import OwnedElsewhere, database_path, open_readonly
from tidemill.warehouse.serving.readonly import QueryLimitExceeded, QueryResult, run_readonly
from tidemill.warehouse.serving.snapshot import open_snapshot, snapshot_path


class NothingToRead(TidemillError, FileNotFoundError):
    """There is no warehouse yet."""


def read_sql(state_dir: Path, sql: str, *, snapshot: bool = False) -> tuple[QueryResult, str]:
    """Run read-only `sql`; returns (result, where it ran: owner | file | snapshot).

    Raises ReadOnlyViolation (or, from the owner, QueryRefused) for SQL that could write,
    QueryRefused for a query stopped by its time or row limit, duckdb.Error for SQL that
    fails, NothingToRead when there is no warehouse yet.
    """
    if not snapshot:
        try:
            return ask_owner(state_dir, sql), "owner"
        except OwnerUnavailable:
            pass
        database = database_path(state_dir)
        if database.exists():
            try:
                con = open_readonly(database)
            except OwnedElsewhere:
                pass  # owned by a process that serves no socket: fall back to the snapshot
            else:
                # while it runs, this read lock keeps an owner from starting: bound it
                with con:
                    try:
                        return run_readonly(con, sql, timeout=QUERY_TIMEOUT_SECONDS), "file"
                    except QueryLimitExceeded as error:  # as the owner reports it
                        raise QueryRefused(str(error)) from None
    published = snapshot_path(state_dir)
    if not published.exists():
        raise NothingToRead(
            f"no warehouse in {state_dir} yet: run `tidemill run PIPELINE --drain` or `make run`"
        )
    with open_snapshot(published) as con:
        return run_readonly(con, sql), "snapshot"


def command(config: TidemillConfig, op: str, **payload: Any) -> dict[str, Any]:
    """Carry out owner command `op` (see deployments/owner.py) in the owner, or here."""
    request = {"op": op, **payload}
    try:
        return call_owner(config.state_dir, request)
    except OwnerUnavailable:
        pass
    from tidemill.deployments.owner import commands
    from tidemill.flows.engine.runtime import Runtime

    runtime = Runtime.open(config)
    try:
        return commands(runtime)[op](request)
    except Refused as error:
        raise QueryRefused(str(error)) from None
    finally:
        runtime.close()
