"""Requests routed into the process that owns the warehouse, over a local Unix socket.

DuckDB lets no second process open a file that is being written, so `tidemill query`
asks the owner (worker or `tidemill run`) to run the statement on a cursor of its own,
and commands that change something (`tidemill models promote`, ...) are carried out by
the owner too. One JSON line in ({"sql": ...} or {"op": NAME, ...}), one JSON line out
({"ok": true, ...} or {"ok": false, "error"}). The socket lives in the state folder,
mode 0600, so only the owner's user can reach it.

A query runs on a cursor of the writer's connection, fenced three ways (see
warehouse/serving/readonly.py): the statement allowlist, a READ ONLY transaction, and the
writer's locked-down connection (no files, no extensions, frozen settings). It is also
interrupted after `query_timeout` seconds and refused past `max_rows` rows, so nobody's
SQL holds the owner's cores or memory for long.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from tidemill.errors import TidemillError
from tidemill.warehouse.connection import Connection
from tidemill.warehouse.serving.readonly import (
    QueryResult,
    run_readonly,
)

MAX_REQUEST_BYTES = 1 << 20
# Below ask_owner's 60 s socket timeout, so the caller hears why its query stopped.
QUERY_TIMEOUT_SECONDS = 30.0
MAX_RESULT_ROWS = 100_000


def socket_path(state_dir: Path) -> Path:
    """Where the owner listens."""
    return state_dir / "run" / "query.sock"


class OwnerUnavailable(ConnectionError):
    """No owner process is listening."""


class QueryRefused(TidemillError, ValueError):
    """The owner refused or failed the statement; the message says why."""


def _encode(result: QueryResult) -> bytes:
    body = {"ok": True, "columns": result.columns, "types": result.types, "rows": result.rows}
    return json.dumps(body, default=str).encode() + b"\n"


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST_BYTES)
        try:
            request = json.loads(line)
            op = request.get("op", "query")
            if op == "query":
                sql = str(request["sql"])
                with self.server.cursors() as cursor:
                    reply = _encode(
                        run_readonly(
                            cursor,
                            sql,
                            timeout=self.server.query_timeout,
                            max_rows=self.server.max_rows,
                        )
                    )
            elif op in self.server.commands:
                result = self.server.commands[op](request)
                reply = json.dumps({"ok": True, **result}, default=str).encode() + b"\n"
            else:
                reply = json.dumps({"ok": False, "error": f"unknown op {op!r}"}).encode() + b"\n"
        except TidemillError as error:  # refused, over a limit, or failed in DuckDB
            reply = json.dumps({"ok": False, "error": str(error)}).encode() + b"\n"
        except (ValueError, KeyError, TypeError):
            reply = json.dumps({"ok": False, "error": "malformed request"}).encode() + b"\n"
        self.wfile.write(reply)


Command = Callable[[dict[str, Any]], dict[str, Any]]
Cursors = Callable[[], AbstractContextManager[Connection]]
"""Hands out a cursor of its own on the owner's connection, closed on exit."""


class Refused(TidemillError, ValueError):
    """Raised by a command to refuse a request; the message goes back to the caller."""


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(
        self,
        path: str,
        cursors: Cursors,
        commands: Mapping[str, Command],
        query_timeout: float,
        max_rows: int,
    ) -> None:
        self.cursors = cursors
        self.commands = dict(commands)
        self.query_timeout = query_timeout
        self.max_rows = max_rows
        super().__init__(path, _Handler)


class QueryService:
    """Serves read-only queries on cursors from `cursors`, and `commands` by name, from a
    background thread until `close()`. A query stops after `query_timeout` seconds and may return at most
    `max_rows` rows."""

    def __init__(
        self,
        state_dir: Path,
        cursors: Cursors,
        commands: Mapping[str, Command] | None = None,
        *,
        query_timeout: float = QUERY_TIMEOUT_SECONDS,
        max_rows: int = MAX_RESULT_ROWS,
    ) -> None:
        path = socket_path(state_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            if _listening(path):
                raise RuntimeError(f"another owner already serves queries on {path}")
            path.unlink()
        self.path = path
        self._server = _Server(str(path), cursors, commands or {}, query_timeout, max_rows)
        os.chmod(path, 0o600)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="tidemill-query", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and remove the socket."""
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)


def _listening(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            probe.connect(str(path))
        return True
    except OSError:
        return False


def call_owner(state_dir: Path, request: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """Send `request` to the owning process; returns its reply. Raises OwnerUnavailable
    when no owner listens, QueryRefused when it refuses or fails the request."""
    path = socket_path(state_dir)
    if not path.exists():
        raise OwnerUnavailable(str(path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        try:
            client.connect(str(path))
        except OSError as error:
            raise OwnerUnavailable(str(path)) from error
        client.sendall(json.dumps(request).encode() + b"\n")
        chunks = []
        while True:
            chunk = client.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    reply: dict[str, Any] = json.loads(
        b"".join(chunks) or b'{"ok": false, "error": "owner closed the connection"}'
    )
    if not reply["ok"]:
        raise QueryRefused(reply["error"])
    return reply


def ask_owner(state_dir: Path, sql: str, timeout: float = 60.0) -> QueryResult:
    """Run read-only `sql` in the owning process; raises OwnerUnavailable or QueryRefused."""
    reply = call_owner(state_dir, {"sql": sql}, timeout)
    return QueryResult(
        columns=reply["columns"], types=reply["types"], rows=[tuple(r) for r in reply["rows"]]
    )
