"""Reaching the warehouse from outside the owning process, whatever is running.

Reads try, in order: the owner, live over DuckDB's Quack protocol (fresh, consistent),
the warehouse file opened read-only (works when nothing owns it), the published snapshot
(when one is kept: as fresh as its last publication). Commands go to the owner's socket,
or run here on the file when no process owns it.

Every path runs the same parser-based allowlist (warehouse/serving/readonly.py) on a
locked-down connection (the owner's, or one opened here read-only without file or
extension access); the file and snapshot paths also run in a READ ONLY transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidemill import utc
from tidemill.config.load import TidemillConfig
from tidemill.deployments.owner_socket import (
    CommandRefused,
    OwnerUnavailable,
    Refused,
    call_owner,
)
from tidemill.errors import TidemillError
from tidemill.keys import get_token
from tidemill.warehouse.connection import OwnedElsewhere, database_path, open_readonly
from tidemill.warehouse.encryption import key_for
from tidemill.warehouse.serving import quack
from tidemill.warehouse.serving.readonly import QueryResult, run_readonly, stream_readonly
from tidemill.warehouse.serving.snapshot import open_snapshot, snapshot_path

if TYPE_CHECKING:
    import pyarrow as pa

QUERY_TIMEOUT_SECONDS = quack.Limits().seconds  # on the file too, where it holds a lock
MAX_RESULT_ROWS = 100_000
MAX_RESULT_BYTES = 64 << 20


class NothingToRead(TidemillError, FileNotFoundError):
    """There is no warehouse yet."""


def read_sql(state_dir: Path, sql: str, *, snapshot: bool = False) -> tuple[QueryResult, str]:
    """Run read-only `sql`; returns (result, where it ran: owner | file | snapshot).

    Raises ReadOnlyViolation for SQL that could write, QueryLimitExceeded for a query
    stopped by its time, row or byte limit, QueryFailed for SQL that fails,
    NothingToRead when there is no warehouse yet.
    """
    if not snapshot:
        try:
            return read_live(state_dir, sql), "owner"
        except quack.OwnerNotServing:
            pass
        database = database_path(state_dir)
        if database.exists():
            try:
                con = open_readonly(database, key_for(database, state_dir))
            except OwnedElsewhere:
                pass  # owned by a process that serves no socket: fall back to the snapshot
            else:
                # while it runs, this read lock keeps an owner from starting: bound it
                with con:
                    return run_readonly(
                        con, sql, timeout=QUERY_TIMEOUT_SECONDS, max_rows=MAX_RESULT_ROWS
                    ), "file"
    published = snapshot_path(state_dir)
    if not published.exists():
        if snapshot:
            raise NothingToRead(
                f"no snapshot published in {state_dir}: set [serving] snapshot_every_seconds "
                "above 0, or read the live warehouse without --snapshot"
            )
        if database_path(state_dir).exists():
            raise NothingToRead(
                f"{database_path(state_dir)} is open in a process that does not serve it live "
                "and no snapshot is published: wait for it to finish, or stop it"
            )
        raise NothingToRead(
            f"no warehouse in {state_dir} yet: run `tidemill run PIPELINE --drain` or `make run`"
        )
    with open_snapshot(published, key_for(published.resolve(), state_dir)) as con:
        return run_readonly(con, sql), "snapshot"


def _live_endpoint(state_dir: Path) -> quack.Endpoint | None:
    """Where the owner of `state_dir` serves, with its token, if it has said so."""
    if not quack.endpoint_file(state_dir).exists():
        return None
    return quack.read_endpoint(state_dir, get_token(state_dir, "quack"))


def read_live(state_dir: Path, sql: str) -> QueryResult:
    """Run read-only `sql` on the owner of `state_dir`, live (quack.py); OwnerNotServing
    when no owner serves it."""
    endpoint = _live_endpoint(state_dir)
    if endpoint is None:
        raise quack.OwnerNotServing(f"no owner serves {state_dir}")
    started = utc.now()
    return quack.run_remote(
        endpoint,
        sql,
        max_rows=MAX_RESULT_ROWS,
        max_bytes=MAX_RESULT_BYTES,
        why_refused=lambda: quack.refusal_reason(state_dir, sql, since=started),
    )


@contextmanager
def stream_sql(state_dir: Path, sql: str) -> Iterator[pa.RecordBatchReader]:
    """Read-only `sql`'s rows as a stream: from the owner, live, or from the file when
    nothing owns it (for exports: no row, byte or time limit)."""
    endpoint = _live_endpoint(state_dir)
    if endpoint is not None and quack.listening(endpoint):
        with quack.streamed(endpoint, sql) as rows:
            yield rows
        return
    database = database_path(state_dir)
    if not database.exists():
        raise NothingToRead(f"no warehouse in {state_dir} yet")
    with open_readonly(database, key_for(database, state_dir)) as con:
        yield stream_readonly(con, sql)


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
        raise CommandRefused(str(error)) from None
    finally:
        runtime.close()
