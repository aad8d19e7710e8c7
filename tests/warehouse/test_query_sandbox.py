"""Query users cannot change the warehouse, whichever way their SQL reaches it.

Every attack runs on the three read paths of `tidemill query` (tidemill/cli/access.py): the
owner, live over Quack (warehouse/serving/quack.py: the writer's own connection serves
it), the warehouse file opened read-only, and the published snapshot. Each is refused in
one line, and afterwards every file is byte for byte what it was. Then the statement
allowlist is switched off, to show what DuckDB's own fences hold by themselves:
enable_external_access=false and lock_configuration everywhere, and the READ ONLY
transaction or read-only file where there is one (not on the live path: there the
allowlist, run by DuckDB's authorization callback, is what refuses writes).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl
import pytest

import tidemill.cli.access
from tidemill.cli.access import read_sql
from tidemill.keys import get_token
from tidemill.warehouse import extensions
from tidemill.warehouse.connection import database_path, open_warehouse
from tidemill.warehouse.serving import quack, readonly
from tidemill.warehouse.serving.readonly import (
    QueryFailed,
    QueryLimitExceeded,
    QueryResult,
    ReadOnlyViolation,
)
from tidemill.warehouse.serving.snapshot import publish_snapshot, snapshot_path

PATHS = ["owner", "file", "snapshot"]
OWNER_TIMEOUT = 2.0
OWNER_MEMORY = 256 << 20
MAX_ROWS = 1000
SLOW = [
    "SELECT sum(hash(range)) FROM range(1000000000000)",
    "SELECT count(*) FROM range(100000) a, range(100000) b WHERE a.range + b.range < 0",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
]
REFUSED = (ReadOnlyViolation, QueryFailed)


@dataclass
class Reader:
    """One read path onto a small real warehouse in `root`/.tidemill."""

    root: Path
    where: str
    writer: duckdb.DuckDBPyConnection | None
    runaways: list[str] = field(default_factory=list)  # what the owner's watch reported

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
    serving = where == "owner"
    con = open_warehouse(
        database,
        load=extensions.EXTENSIONS if serving else (),
        prepare=quack.authorization(state_dir) if serving else None,
    )
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
    runaways: list[str] = []
    live = quack.LiveServer(
        state_dir,
        get_token(state_dir, "quack"),
        quack.Limits(OWNER_TIMEOUT, OWNER_MEMORY),
        on_runaway=runaways.append,
    )
    live.start(con)
    try:
        yield Reader(root, where, con, runaways)
    finally:
        live.close()
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
    ("SELECT * FROM '{tmp}/landing.csv'", 'Cannot access file "{tmp}'),
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
    ("SELECT * FROM query_table('raw.t')", "table function query_table() is refused"),
    ("SELECT * FROM duckdb_secrets()", "table function duckdb_secrets() is refused"),
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
    ("/* /* */ SELECT 1 */ DELETE FROM raw.t", "DELETE statements are refused"),  # nested
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
FILES = (
    "Permission Error|disabled by configuration|disabled through configuration"  # Quack re-wraps it
)
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
    ("LOAD ducklake", FILES),  # (the owner's own httpfs and quack: loaded, LOAD is a no-op)
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
    monkeypatch.setattr(quack, "check_readonly", lambda con, sql: None)
    with reader(tmp_path, where) as path:
        files = path.files()
        for attack, refusal in DUCKDB_FENCES:
            if where == "owner" and refusal == WRITES:
                continue  # no READ ONLY transaction on the live path: the allowlist holds
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
        with pytest.raises(ReadOnlyViolation, match=re.escape("checkpoint() is refused")):
            path.read("SELECT * FROM checkpoint()")
        assert wal.stat().st_size == logged
        monkeypatch.setattr(readonly, "check_readonly", lambda con, sql: None)
        monkeypatch.setattr(quack, "check_readonly", lambda con, sql: None)
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


# What the live path refuses before running (nothing can stop a statement there).
PLANNED_TOO_BIG = [
    "the plan estimates 1,000,000,000,000 rows in range",
    "the plan estimates 10,000,000,000 rows in blockwise_nl_join",
    "recursive CTEs are refused on the live path",
]


@pytest.mark.parametrize(("slow_sql", "refusal"), list(zip(SLOW, PLANNED_TOO_BIG, strict=True)))
def test_the_live_path_refuses_what_its_plan_says_would_not_finish(
    tmp_path: Path, slow_sql: str, refusal: str
) -> None:
    with reader(tmp_path, "owner") as path:
        started = time.monotonic()
        with pytest.raises(QueryLimitExceeded, match=re.escape(refusal)) as refused:
            path.read(slow_sql)
        assert "\n" not in str(refused.value)
        assert time.monotonic() - started < 1.0
        assert path.runaways == []
        assert path.read("SELECT count(*) FROM raw.t").rows == [(2,)]


def test_a_live_statement_past_its_time_is_reported_to_the_owner_once(tmp_path: Path) -> None:
    with reader(tmp_path, "owner") as path:  # within the plan's bound, but slow
        assert path.writer is not None
        counted: list[QueryResult] = []
        query = threading.Thread(
            target=lambda: counted.append(
                path.read("SELECT count(*) FROM range(600000000) WHERE hash(range) % 7 = 0")
            )
        )
        query.start()
        time.sleep(0.5)  # the owner commits, checkpoints and publishes meanwhile
        began = time.monotonic()
        path.writer.execute("INSERT INTO raw.t (v) VALUES ('c')")
        path.writer.execute("CHECKPOINT")
        publish_snapshot(database_path(path.state_dir), snapshot_path(path.state_dir))
        assert time.monotonic() - began < 1.0
        query.join(timeout=60)
        assert counted and counted[0].rows[0][0] > 0
        assert path.runaways == [f"ran past {OWNER_TIMEOUT:g} s"]


@pytest.mark.parametrize("slow_sql", SLOW)
def test_a_long_query_on_the_file_is_stopped_and_blocks_not_the_next_query(
    tmp_path: Path, slow_sql: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tidemill.cli.access, "QUERY_TIMEOUT_SECONDS", OWNER_TIMEOUT)
    with reader(tmp_path, "file") as path:
        outcome: list[BaseException] = []

        def slow() -> None:
            try:
                path.read(slow_sql)
            except BaseException as error:
                outcome.append(error)

        started = time.monotonic()
        query = threading.Thread(target=slow)
        query.start()
        query.join(timeout=30)
        assert not query.is_alive()
        assert time.monotonic() - started < OWNER_TIMEOUT + 5
        assert len(outcome) == 1 and isinstance(outcome[0], QueryLimitExceeded)
        assert f"stopped after {OWNER_TIMEOUT:g} s" in str(outcome[0])
        assert path.read("SELECT count(*) FROM raw.t").rows[0][0] >= 2


@pytest.mark.parametrize("where", ["owner", "file"])
def test_a_result_too_large_is_refused_by_rows_and_by_bytes_but_the_snapshot_is_not(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tidemill.cli.access, "MAX_RESULT_ROWS", MAX_ROWS)
    with reader(tmp_path, where) as path:
        assert len(path.read(f"FROM range({MAX_ROWS})").rows) == MAX_ROWS
        with pytest.raises(QueryLimitExceeded, match=f"more than {MAX_ROWS:,} rows"):
            path.read(f"FROM range({MAX_ROWS + 1})")
        snapshot, _ = read_sql(path.state_dir, f"FROM range({MAX_ROWS + 1})", snapshot=True)
        assert len(snapshot.rows) == MAX_ROWS + 1
        if where == "owner":  # 1 GB, held whole by the owner before it sends
            with pytest.raises(QueryLimitExceeded, match="larger than 64 MiB"):
                path.read("SELECT repeat('x', 1000000) FROM range(1000)")
            assert path.runaways == ["grew the owner by more than 256 MiB"]
            assert path.read("SELECT count(*) FROM raw.t").rows == [(2,)]
