"""Live SQL for other processes: the owner serves its warehouse over DuckDB's Quack
protocol on 127.0.0.1, and clients reach it with DuckDB itself (the `duckdb` shell,
Python, anything built on DuckDB 1.5.5 with the quack extension).

Fences (docs/duckdb-1.5.md has what was measured):
- a token (32 random bytes, hex, in `keys/`, 0600), without which nothing is answered;
- an authorization function DuckDB calls with every statement a client sends: the
  parser-based allowlist of readonly.py (the same on every read path), then the plan
  guard of cost.py, since nothing stops a statement once it runs here;
- the owner's connection: no files, no extensions beyond those loaded, frozen settings;
- `LiveServer`'s watch, for what the plan did not foresee: a statement past its time, or
  the process grown past its memory headroom while statements run (the owner holds a
  whole result before it sends it), is logged, and the owner's `on_runaway` runs (the
  worker exits, and its supervisor starts it again: DuckDB's WAL keeps every commit).
Refusals and runaways are appended to `run/quack-refusals.jsonl`, so `tidemill query`
says why instead of DuckDB's bare "Authorization failed".
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from tidemill import utc
from tidemill.durable import write_atomic
from tidemill.warehouse import extensions
from tidemill.warehouse.connection import LOCKED_DOWN, Prepare, lock_configuration
from tidemill.warehouse.serving.cost import check_cost
from tidemill.warehouse.serving.readonly import (
    QueryFailed,
    QueryLimitExceeded,
    QueryResult,
    check_readonly,
)

log = logging.getLogger("tidemill")

AUTHORIZE = "tidemill_authorize"
ENDPOINT_FILE = "serving.json"
REFUSALS_FILE = "quack-refusals.jsonl"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Limits:
    """What one client statement may take of the owner."""

    seconds: float = 30.0
    memory_bytes: int = 1 << 30  # process growth while statements run


@dataclass(frozen=True)
class Endpoint:
    """Where an owner serves, and the token it asks for."""

    port: int
    token: str

    @property
    def uri(self) -> str:
        return f"quack:{HOST}:{self.port}"


def authorization(state_dir: Path) -> Prepare:
    """The open_warehouse hook that makes DuckDB ask, about every statement a Quack
    client sends, readonly.check_readonly and then cost.check_cost (refused: DuckDB's
    "Authorization failed"; the reason goes to the refusals log)."""
    parser = duckdb.connect(":memory:", config=dict(LOCKED_DOWN))
    lock = threading.Lock()

    def prepare(con: duckdb.DuckDBPyConnection) -> None:
        def authorize(_session: str, query: str) -> bool:
            try:
                with lock:
                    check_readonly(parser, query)
                with con.cursor() as cursor:
                    check_cost(cursor, query)
            except Exception as error:  # every refusal and every surprise says no
                log.info("refused a Quack client's statement: %s", error)
                _log_refusal(state_dir, [query], str(error))
                return False
            return True

        con.create_function(AUTHORIZE, authorize, ["VARCHAR", "VARCHAR"], "BOOLEAN")
        con.execute(f"SET GLOBAL quack_authorization_function = '{AUTHORIZE}'")

    return prepare


def _log_refusal(state_dir: Path, queries: list[str], reason: str) -> None:
    at = utc.now().isoformat()
    path = state_dir / "run" / REFUSALS_FILE
    path.parent.mkdir(mode=0o700, exist_ok=True)
    with path.open("a") as refusals:
        for query in queries:
            refusals.write(json.dumps({"at": at, "query": query, "reason": reason}) + "\n")


def endpoint_file(state_dir: Path) -> Path:
    """Where an owner records the endpoint it serves on (its port is kept across starts)."""
    return state_dir / ENDPOINT_FILE


def read_endpoint(state_dir: Path, token: str) -> Endpoint | None:
    """The endpoint an owner of `state_dir` recorded, if any."""
    try:
        port = int(json.loads(endpoint_file(state_dir).read_text())["port"])
    except (OSError, ValueError, KeyError):
        return None
    return Endpoint(port, token)


def listening(endpoint: Endpoint) -> bool:
    """Whether something accepts connections at `endpoint` (an owner that is running)."""
    try:
        with socket.create_connection((HOST, endpoint.port), timeout=1.0):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class LiveServer:
    """Serves the owner's connection over Quack on the port kept in the state folder
    (another free one if it is taken) and watches what clients run: `on_runaway(reason)`
    is called once per statement past `limits` (see the module's docstring)."""

    def __init__(
        self,
        state_dir: Path,
        token: str,
        limits: Limits | None = None,
        on_runaway: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.state_dir = state_dir
        self.token = token
        self.limits = limits or Limits()
        self.on_runaway = on_runaway
        self.endpoint: Endpoint | None = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, con: duckdb.DuckDBPyConnection) -> Endpoint:
        """Serve `con` (an owner connection opened with `authorization()`)."""
        with self._lock:
            self._con = con
            kept = read_endpoint(self.state_dir, self.token)
            ports = ([kept.port] if kept else []) + [_free_port(), _free_port()]
            for port in ports:
                try:
                    con.execute(
                        "CALL quack_serve(?, token := ?)", [Endpoint(port, "").uri, self.token]
                    )
                except duckdb.Error as error:
                    log.info("cannot serve on port %s (%s); trying another", port, error)
                    continue
                self.endpoint = Endpoint(port, self.token)
                break
            else:
                raise OSError(f"no port to serve the warehouse on ({ports})")
        text = json.dumps({"uri": self.endpoint.uri, "port": self.endpoint.port}).encode()
        write_atomic(endpoint_file(self.state_dir), lambda handle: handle.write(text))
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="tidemill-quack", daemon=True)
            self._thread.start()
        return self.endpoint

    def detach(self) -> None:
        """Forget the connection (its owner is about to close it, which stops serving);
        `start` serves the next one."""
        with self._lock:
            self._con = None

    def close(self) -> None:
        """Stop serving and watching."""
        self._stop.set()
        with self._lock:
            if self._con is not None and self.endpoint is not None:
                _stop_listening(self._con, self.endpoint)
            self._con = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        seen: dict[tuple[str, str], float] = {}
        reported: set[tuple[str, str]] = set()
        baseline = _resident_bytes()
        while not self._stop.wait(0.25):
            with self._lock:
                if self._con is None:
                    continue
                try:
                    with self._con.cursor() as cursor:
                        active = cursor.sql(
                            "SELECT connection_id, query FROM quack_active_connections() "
                            "WHERE state = 'active'"
                        ).fetchall()
                except duckdb.Error:
                    continue
            now, resident = time.monotonic(), _resident_bytes()
            if not active:
                seen.clear()
                reported.clear()
                baseline = resident
                continue
            seen = {key: seen.get(key, now) for key in active}
            slow = [key for key, since in seen.items() if now - since > self.limits.seconds]
            grown = resident - baseline > self.limits.memory_bytes
            runaway = [
                key for key in (slow or (list(seen) if grown else [])) if key not in reported
            ]
            if not runaway:
                continue
            reported.update(runaway)
            reason = (
                f"ran past {self.limits.seconds:g} s"
                if slow
                else f"grew the owner by more than {self.limits.memory_bytes >> 20} MiB"
            )
            log.error(
                "a Quack client's statement %s and cannot be stopped: %s",
                reason,
                runaway[0][1][:200],
            )
            _log_refusal(self.state_dir, [q for _, q in runaway], f"the statement {reason}")
            self.on_runaway(reason)


def _stop_listening(con: duckdb.DuckDBPyConnection, endpoint: Endpoint) -> None:
    try:
        con.execute("CALL quack_stop(?)", [endpoint.uri])
    except duckdb.Error as error:
        log.info("quack_stop: %s", error)


def refusal_reason(state_dir: Path, sql: str, *, since: datetime) -> str | None:
    """Why the owner refused statement `sql` (or found it running away) at or after
    `since`, if it did."""
    try:
        lines = (state_dir / "run" / REFUSALS_FILE).read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines[-100:]):
        stop = json.loads(line)
        if stop["query"].strip() == sql.strip() and datetime.fromisoformat(stop["at"]) >= since:
            return str(stop["reason"])
    return None


class OwnerNotServing(ConnectionError):
    """Nothing answers at the endpoint."""


_client: duckdb.DuckDBPyConnection | None = None
_client_lock = threading.Lock()


def _client_cursor() -> duckdb.DuckDBPyConnection:
    """A cursor of this process's Quack client: an in-memory DuckDB, itself locked down
    (the SQL it is given runs on the owner; nothing of it runs here), made once since
    loading its extensions takes 0.2 s."""
    global _client
    with _client_lock:
        if _client is None:
            con = duckdb.connect(
                ":memory:", config={**extensions.settings(), "allow_persistent_secrets": False}
            )
            extensions.load(con, extensions.EXTENSIONS)
            con.execute("SET enable_external_access = false")
            lock_configuration(con)
            _client = con
        return _client.cursor()


def check_locally(sql: str) -> None:
    """Raise ReadOnlyViolation, with the reason, for SQL the owner would refuse (it only
    says "Authorization failed"); checked in this process, nothing is sent."""
    with _client_cursor() as con:
        check_readonly(con, sql)


def run_remote(
    endpoint: Endpoint,
    sql: str,
    *,
    max_rows: int,
    max_bytes: int,
    why_refused: Callable[[], str | None] = lambda: None,
) -> QueryResult:
    """Run read-only `sql` on the owner at `endpoint`; the result is cut off
    (QueryLimitExceeded) past `max_rows` rows or `max_bytes` bytes. Raises
    ReadOnlyViolation before sending SQL that could write, QueryLimitExceeded when the
    owner refuses it (`why_refused` reads the reason), QueryFailed for SQL the owner
    cannot run, OwnerNotServing when nothing answers."""
    with _client_cursor() as con:
        return _run_remote(con, endpoint, sql, max_rows, max_bytes, why_refused)


@contextmanager
def streamed(endpoint: Endpoint, sql: str) -> Iterator[pa.RecordBatchReader]:
    """Read-only `sql` run on the owner at `endpoint`, its rows streamed as they come (for
    exports: no row or byte limit). Raises as `run_remote` does."""
    with _client_cursor() as con:
        check_readonly(con, sql)
        try:
            cursor = con.execute(
                "SELECT * FROM quack_query(?, ?, token := ?)", [endpoint.uri, sql, endpoint.token]
            )
        except duckdb.IOException as error:
            raise OwnerNotServing(str(error).splitlines()[0]) from None
        except duckdb.Error as error:
            raise QueryFailed(duckdb.Error(str(error).split(_WRAPPING)[0])) from None
        yield cursor.to_arrow_reader(8192)


_WRAPPING = "\n\nLINE 1: SELECT * FROM quack_query"


def _run_remote(
    con: duckdb.DuckDBPyConnection,
    endpoint: Endpoint,
    sql: str,
    max_rows: int,
    max_bytes: int,
    why_refused: Callable[[], str | None],
) -> QueryResult:
    check_readonly(con, sql)  # the owner checks again; this one says why
    try:
        cursor = con.execute(
            "SELECT * FROM quack_query(?, ?, token := ?)", [endpoint.uri, sql, endpoint.token]
        )
        description = cursor.description or []
        reader = cursor.to_arrow_reader(2048)
        batches: list[pa.RecordBatch] = []
        rows = size = 0
        for batch in reader:
            batches.append(batch)
            rows, size = rows + batch.num_rows, size + batch.nbytes
            if rows > max_rows:
                raise QueryLimitExceeded(
                    f"the result has more than {max_rows:,} rows: add a LIMIT or an aggregate"
                )
            if size > max_bytes:
                raise QueryLimitExceeded(
                    f"the result is larger than {max_bytes >> 20} MiB: select fewer columns, "
                    "add a LIMIT or an aggregate"
                )
    except duckdb.IOException as error:
        raise OwnerNotServing(str(error).splitlines()[0]) from None
    except duckdb.Error as error:  # the owner's message, without this client's wrapping
        reason = why_refused() if "Authorization failed" in str(error) else None
        if reason is not None:
            raise QueryLimitExceeded(reason) from None
        raise QueryFailed(duckdb.Error(str(error).split(_WRAPPING)[0])) from None
    values: list[tuple[object, ...]] = []
    if rows:  # back through DuckDB: the same Python values as on every other path
        con.register("_result", pa.Table.from_batches(batches, schema=reader.schema))
        try:
            values = con.sql("SELECT * FROM _result").fetchall()
        finally:
            con.unregister("_result")
    return QueryResult(
        columns=[d[0] for d in description],
        types=[str(d[1]) for d in description],
        rows=values,
    )
