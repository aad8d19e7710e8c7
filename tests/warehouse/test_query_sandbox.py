"""Query users cannot change the warehouse, whichever way their SQL reaches it.

Every attack runs on the three read paths of `tidemill query` (tidemill/cli/access.py): the
owner's socket (deployments/query_service.QueryService, a cursor of the writer's own
connection), the warehouse file opened read-only, and the published snapshot. Each is
refused in one line, and afterwards every file is byte for byte what it was. Then the
statement allowlist is switched off, to show DuckDB's own fences hold by themselves:
the READ ONLY transaction or read-only file, enable_external_access=false and
lock_configuration.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl
import pytest

import tidemill.cli.access
from tidemill.cli.access import read_sql
from tidemill.deployments.query_service import QueryRefused, QueryService
from tidemill.warehouse.connection import database_path, open_warehouse
from tidemill.warehouse.serving import readonly
from tidemill.warehouse.serving.readonly import QueryFailed, QueryResult, ReadOnlyViolation
from tidemill.warehouse.serving.snapshot import publish_snapshot, snapshot_path

PATHS = ["owner", "file", "snapshot"]
OWNER_TIMEOUT = 2.0
OWNER_MAX_ROWS = 1000
SLOW = "SELECT sum(hash(range)) FROM range(1000000000000)"
REFUSED = (QueryRefused, ReadOnlyViolation, QueryFailed)


@dataclass
class Reader:
    """One read path onto a small real warehouse in `root`/.tidemill."""

    root: Path
    where: str
    writer: duckdb.DuckDBPyConnection | None

    @property
    def state_dir(self) -> Path:
        return self.root / ".tidemill"

    def read(self, sql: str) -> QueryResult:
        result, where = read_sql(self.state_dir, sql, snapshot=self.where == "snapshot")
        assert where == self.where
        return result

    def files(self) -> dict[str, str]:
        """sha256 of every regular file under the test's folder."""
        return {
            str(p.relative_to(self.root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(self.root.rglob("*"))
            if p.is_file()
        }

    def state(self) -> list[tuple[object, ...]]:
        """What a query user could have changed, as seen through this path."""
        return self.read(
            "SELECT (SELECT count(*) FROM raw.t), (SELECT max(id) FROM raw.t), "
            "(SELECT last_value FROM duckdb_sequences() WHERE sequence_name = 't_seq'), "
            "(SELECT string_agg(database_name, ',' ORDER BY database_name) "
            " FROM duckdb_databases()), "
            "(SELECT count(*) FROM duckdb_functions() WHERE NOT internal), "
            "current_setting('enable_external_access'), current_setting('lock_configuration'), "
            "current_setting('TimeZone')"
        ).rows


@contextmanager
def reader(root: Path, where: str) -> Iterator[Reader]:
    """A warehouse with table raw.t and sequence raw.t_seq, its snapshot published, read
    through `where`: its owner serving the socket, or no owner at all."""
    state_dir = root / ".tidemill"
    database = database_path(state_dir)
    con = open_warehouse(database)
    con.execute("CREATE SEQUENCE raw.t_seq")
    con.execute("CREATE TABLE raw.t (id BIGINT DEFAULT nextval('raw.t_seq'), v VARCHAR)")
    con.execute("INSERT INTO raw.t (v) VALUES ('a'), ('b')")
    con.execute("CHECKPOINT")
    publish_snapshot(database, snapshot_path(state_dir))
    (root / "landing.csv").write_text("v\nfrom a file\n")
    if where != "owner":
        con.close()
        yield Reader(root, where, None)
        return
    lock = threading.RLock()

    @contextmanager
    def cursors() -> Iterator[duckdb.DuckDBPyConnection]:
        with lock:
            cursor = con.cursor()
        try:
            yield cursor
        finally:
            cursor.close()

    service = QueryService(
        state_dir,
        cursors,
        query_timeout=OWNER_TIMEOUT,
        max_rows=OWNER_MAX_ROWS,
    )
    try:
        yield Reader(root, where, con)
    finally:
        service.close()
        con.close()


def untouched(where: str) -> list[tuple[object, ...]]:
    databases = "snapshot,system,temp" if where == "snapshot" else "system,temp,warehouse"
    # DuckDB 1.5 reports a sequence read back from a file with last_value = its next value
    last = 2 if where == "owner" else 3
    return [(2, 2, last, databases, 0, False, True, "UTC")]


# (attack, the one-line refusal); {tmp} is the test's folder.
ATTACKS = [
    ("SELECT * FROM read_csv('/etc/passwd')", "table function read_csv() is refused"),
    ("SELECT * FROM read_text('/etc/passwd')", "table function read_text() is refused"),
    ("SELECT * FROM read_blob('/etc/passwd')", "table function read_blob() is refused"),
    ("SELECT * FROM glob('/etc/*')", "table function glob() is refused"),
    ("SELECT * FROM sniff_csv('{tmp}/landing.csv')", "table function sniff_csv() is refused"),
    ("SELECT * FROM '{tmp}/landing.csv'", 'Permission Error: Cannot access file "{tmp}'),
    ("COPY (SELECT * FROM raw.t) TO '{tmp}/stolen.csv'", "COPY statements are refused"),
    ("COPY raw.t FROM '{tmp}/landing.csv'", "COPY statements are refused"),
    ("EXPORT DATABASE '{tmp}/export'", "EXPORT statements are refused"),
    ("ATTACH '{tmp}/evil.duckdb' AS evil", "ATTACH statements are refused"),
    ("ATTACH ':memory:' AS scratch", "ATTACH statements are refused"),
    ("DETACH warehouse", "DETACH statements are refused"),
    ("USE system", "SET statements are refused"),
    ("INSTALL httpfs", "LOAD statements are refused"),
    ("LOAD httpfs", "LOAD statements are refused"),
    ("SET enable_external_access = true", "SET statements are refused"),
    ("RESET lock_configuration", "SET statements are refused"),
    ("SET GLOBAL threads = 1", "SET statements are refused"),
    ("PRAGMA enable_profiling", "PRAGMA statements are refused"),
    ("SELECT * FROM enable_logging()", "table function enable_logging() is refused"),
    ("CALL checkpoint()", "CALL statements are refused"),
    ("CHECKPOINT", "CALL statements are refused"),
    ("SELECT * FROM checkpoint()", "table function checkpoint() is refused"),
    ("SELECT * FROM force_checkpoint()", "table function force_checkpoint() is refused"),
    ("SELECT * FROM query('SELECT * FROM checkpoint()')", "table function query() is refused"),
    ("VACUUM", "VACUUM statements are refused"),
    ("INSERT INTO raw.t (v) VALUES ('x')", "INSERT statements are refused"),
    ("WITH x AS (SELECT 'x') INSERT INTO raw.t (v) SELECT * FROM x", "INSERT statements"),
    ("SELECT 1; DROP TABLE raw.t", "DROP statements are refused"),
    ("DELETE FROM raw.t", "DELETE statements are refused"),
    ("EXPLAIN ANALYZE DELETE FROM raw.t", "DELETE statements are refused"),
    # a quoted ')' in EXPLAIN's options: the statement it would run is found by DuckDB's
    # tokenizer, not taken from where a regex thought the options end
    (
        "EXPLAIN (ANALYZE ') SELECT 1 --') CREATE TABLE pwned AS SELECT 1",
        "CREATE statements are refused",
    ),
    ("SELECT 1 --\rDELETE FROM raw.t", "syntax error at or near"),  # \r ends the comment
    ("SELECT 1; COMMIT; CREATE TABLE x AS SELECT 1", "TRANSACTION statements are refused"),
    ("CREATE TEMP TABLE x AS SELECT 1", "CREATE statements are refused"),
    ("CREATE MACRO twice(x) AS 2 * x", "CREATE statements are refused"),
    ("SELECT nextval('raw.t_seq')", "nextval() is refused"),
    ("SELECT getenv('HOME')", "Scalar Function with name getenv does not exist"),
]


@pytest.mark.parametrize("where", PATHS)
def test_every_attack_is_refused_in_one_line_and_changes_no_byte(
    tmp_path: Path, where: str
) -> None:
    with reader(tmp_path, where) as path:
        files = path.files()
        assert path.state() == untouched(where)
        for attack, refusal in ATTACKS:
            sql, expected = attack.format(tmp=tmp_path), refusal.format(tmp=tmp_path)
            with pytest.raises(REFUSED, match=re.escape(expected)) as refused:
                path.read(sql)
            assert "\n" not in str(refused.value), sql  # one line, DuckDB's errors too
            assert path.files() == files, f"{sql} changed a file on the {where} path"
        assert path.state() == untouched(where)
        if path.writer is not None:  # and the owner still writes as before
            path.writer.execute("INSERT INTO raw.t (v) VALUES ('c')")
            assert path.read("SELECT max(id) FROM raw.t").rows == [(3,)]


# With the allowlist off: (attack, what DuckDB itself answers on every path).
FILES = "Permission Error"
LOCKED = "the configuration has been locked"
WRITES = "read-only"
DUCKDB_FENCES = [
    ("SELECT * FROM read_csv('/etc/passwd')", FILES),
    ("SELECT * FROM read_text('/etc/passwd')", FILES),
    ("SELECT * FROM read_blob('/etc/passwd')", FILES),
    ("SELECT * FROM glob('/etc/*')", FILES),
    ("SELECT * FROM '{tmp}/landing.csv'", FILES),
    ("COPY (SELECT * FROM raw.t) TO '{tmp}/stolen.csv'", FILES),
    ("EXPORT DATABASE '{tmp}/export'", FILES),
    ("ATTACH '{tmp}/evil.duckdb' AS evil", FILES),
    ("INSTALL httpfs", FILES),
    ("LOAD httpfs", FILES),
    ("SET enable_external_access = true", LOCKED),
    ("RESET lock_configuration", LOCKED),
    ("SET GLOBAL threads = 1", LOCKED),
    ("PRAGMA enable_profiling = 'json'", LOCKED),
    # DuckDB 1.5 lets the shorthand PRAGMAs and enable_logging() through a locked
    # configuration: only the allowlist refuses them (ATTACKS above)
    ("INSERT INTO raw.t (v) VALUES ('x')", WRITES),
    ("WITH x AS (SELECT 'x') INSERT INTO raw.t (v) SELECT * FROM x", WRITES),
    ("SELECT 1; DROP TABLE raw.t", WRITES),
    ("DELETE FROM raw.t", WRITES),
    ("UPDATE raw.t SET v = 'x'", WRITES),
    ("EXPLAIN ANALYZE DELETE FROM raw.t", WRITES),
    ("CREATE MACRO twice(x) AS 2 * x", WRITES),
    ("COMMENT ON TABLE raw.t IS 'x'", WRITES),
    ("SELECT nextval('raw.t_seq')", WRITES),
    ("SELECT setval('raw.t_seq', 100)", "setval does not exist"),  # DuckDB 1.5 has none
]


@pytest.mark.parametrize("where", PATHS)
def test_duckdb_alone_refuses_files_settings_and_writes_on_every_path(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readonly, "check_readonly", lambda con, sql: None)
    with reader(tmp_path, where) as path:
        files = path.files()
        for attack, refusal in DUCKDB_FENCES:
            sql = attack.format(tmp=tmp_path)
            with pytest.raises(REFUSED, match=refusal):
                path.read(sql)
            assert path.files() == files, f"{sql} changed a file on the {where} path"
        assert path.state() == untouched(where)


def test_a_cursor_of_the_writer_could_checkpoint_so_the_allowlist_refuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with reader(tmp_path, "owner") as path:
        assert path.writer is not None
        path.writer.execute("INSERT INTO raw.t (v) VALUES ('c')")  # now in the WAL only
        wal = database_path(path.state_dir).with_suffix(".duckdb.wal")
        logged = wal.stat().st_size
        with pytest.raises(QueryRefused, match=re.escape("checkpoint() is refused")):
            path.read("SELECT * FROM checkpoint()")
        assert wal.stat().st_size == logged
        monkeypatch.setattr(readonly, "check_readonly", lambda con, sql: None)
        path.read("SELECT * FROM checkpoint()")  # DuckDB lets a READ ONLY cursor do it
        assert not wal.exists() or wal.stat().st_size < logged


def test_the_writers_own_connection_reaches_no_file_extension_or_python_variable(
    tmp_path: Path,
) -> None:
    con = open_warehouse(tmp_path / "w.duckdb")
    frame = pl.DataFrame({"v": ["from python"]})
    with pytest.raises(duckdb.CatalogException, match="frame"):
        con.sql("SELECT * FROM frame").fetchall()  # no replacement scan of `frame` above
    con.register("_incoming", frame.to_arrow())  # what the writer uses instead
    assert con.sql("SELECT v FROM _incoming").fetchall() == [("from python",)]
    with pytest.raises(duckdb.PermissionException):
        con.sql("SELECT * FROM read_text('/etc/passwd')").fetchall()
    with pytest.raises(duckdb.PermissionException):
        con.execute("LOAD httpfs")
    with pytest.raises(duckdb.InvalidInputException, match="locked"):
        con.execute("SET enable_external_access = true")
    cursor = con.cursor()  # settings belong to the database: every cursor has them
    assert cursor.sql(
        "SELECT current_setting('enable_external_access'), current_setting('TimeZone')"
    ).fetchall() == [(False, "UTC")]
    con.close()


@pytest.mark.parametrize("where", ["owner", "file"])
def test_a_long_query_is_stopped_and_blocks_neither_the_writer_nor_the_next_query(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tidemill.cli.access, "QUERY_TIMEOUT_SECONDS", OWNER_TIMEOUT)
    with reader(tmp_path, where) as path:
        outcome: list[BaseException] = []

        def slow() -> None:
            try:
                path.read(SLOW)
            except BaseException as error:
                outcome.append(error)

        started = time.monotonic()
        query = threading.Thread(target=slow)
        query.start()
        time.sleep(0.5)
        if path.writer is not None:  # the owner commits, checkpoints and publishes meanwhile
            began = time.monotonic()
            path.writer.execute("INSERT INTO raw.t (v) VALUES ('c')")
            path.writer.execute("CHECKPOINT")
            publish_snapshot(database_path(path.state_dir), snapshot_path(path.state_dir))
            assert time.monotonic() - began < 1.0
        query.join(timeout=30)
        assert not query.is_alive()
        assert time.monotonic() - started < OWNER_TIMEOUT + 5
        assert len(outcome) == 1 and isinstance(outcome[0], QueryRefused)
        assert f"stopped after {OWNER_TIMEOUT:g} s" in str(outcome[0])
        assert path.read("SELECT count(*) FROM raw.t").rows[0][0] >= 2


def test_the_owner_refuses_a_result_too_large_to_hold_but_the_snapshot_does_not(
    tmp_path: Path,
) -> None:
    with reader(tmp_path, "owner") as path:
        assert len(path.read(f"FROM range({OWNER_MAX_ROWS})").rows) == OWNER_MAX_ROWS
        with pytest.raises(QueryRefused, match=f"more than {OWNER_MAX_ROWS:,} rows"):
            path.read(f"FROM range({OWNER_MAX_ROWS + 1})")
        snapshot, _ = read_sql(path.state_dir, f"FROM range({OWNER_MAX_ROWS + 1})", snapshot=True)
        assert len(snapshot.rows) == OWNER_MAX_ROWS + 1
