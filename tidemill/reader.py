"""Reading the warehouse from outside the owning process, whatever is running.

Tries, in order: the owner's query socket (fresh, consistent), the warehouse file
opened read-only (works when nothing owns it), the published snapshot (works always,
as fresh as its last publication).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from deployments.query_service import OwnerUnavailable, ask_owner
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
