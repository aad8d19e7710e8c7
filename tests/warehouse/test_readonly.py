"""The statement allowlist: what reads runs, what could write is refused before it runs.

The read paths and DuckDB's own fences are attacked in test_query_sandbox.py.
"""

import re
import threading
import time

import duckdb
import pytest

from tidemill.warehouse.serving.readonly import QueryLimitExceeded, ReadOnlyViolation, run_readonly


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE TABLE t (a INTEGER)")
    con.execute("INSERT INTO t VALUES (1), (2)")
    con.execute("CREATE SEQUENCE s")
    return con


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT sum(a) FROM t",
        "FROM t",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "DESCRIBE t",
        "SUMMARIZE t",
        "SHOW TABLES",
        "VALUES (1)",
        "EXPLAIN SELECT 1",
        "EXPLAIN ANALYZE SELECT sum(a) FROM t",
        "EXPLAIN (FORMAT json) SELECT 1",
        "/* why */ explain\nanalyse FROM t",
        "SELECT * FROM range(3) r, unnest([1, 2])",
        "SELECT table_name FROM duckdb_tables()",
        "SELECT * FROM pragma_table_info('t')",
        "SELECT current_setting('TimeZone')",
        "SELECT 1; SELECT sum(a) FROM t",
    ],
)
def test_reading_statements_run(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    assert run_readonly(con.cursor(), sql).rows


@pytest.mark.parametrize(
    ("sql", "refusal"),
    [
        ("INSERT INTO t VALUES (3)", "INSERT statements are refused"),
        ("DELETE FROM t", "DELETE statements are refused"),
        ("DROP TABLE t", "DROP statements are refused"),
        ("SELECT 1; UPDATE t SET a = 0", "UPDATE statements are refused"),
        ("WITH x AS (SELECT 3) INSERT INTO t SELECT * FROM x", "INSERT statements are refused"),
        ("EXPLAIN ANALYZE DELETE FROM t", "DELETE statements are refused"),
        ("/* hide */ EXPLAIN ANALYZE DELETE FROM t", "DELETE statements are refused"),
        ("EXPLAIN (ANALYZE) DELETE FROM t", "DELETE statements are refused"),
        ("EXPLAIN SELECT 1; EXPLAIN ANALYZE INSERT INTO t VALUES (3)", "INSERT statements"),
        ("COPY t TO '/tmp/x.csv'", "COPY statements are refused"),
        ("ATTACH ':memory:' AS m", "ATTACH statements are refused"),
        ("DETACH m", "DETACH statements are refused"),
        ("CHECKPOINT", "CALL statements are refused"),
        ("CALL checkpoint()", "CALL statements are refused"),
        ("EXPORT DATABASE '/tmp/x'", "EXPORT statements are refused"),
        ("INSTALL httpfs", "LOAD statements are refused"),
        ("LOAD httpfs", "LOAD statements are refused"),
        ("SET threads = 1", "SET statements are refused"),
        ("RESET lock_configuration", "SET statements are refused"),
        ("USE memory", "SET statements are refused"),
        ("SET VARIABLE v = 1", "SET statements are refused"),
        ("PRAGMA enable_profiling", "PRAGMA statements are refused"),
        ("VACUUM", "VACUUM statements are refused"),
        ("ANALYZE", "VACUUM statements are refused"),
        ("CREATE TEMP TABLE x (a INTEGER)", "CREATE statements are refused"),
        ("CREATE MACRO m(x) AS x + 1", "CREATE statements are refused"),
        ("PIVOT t ON a", "CREATE statements are refused"),  # it creates an ENUM type first
        ("UPDATE EXTENSIONS", "statements of an unknown kind are refused"),
        ("SELECT * FROM checkpoint()", "table function checkpoint() is refused"),
        ("SELECT * FROM force_checkpoint()", "table function force_checkpoint() is refused"),
        ('SELECT * FROM system.main."CHECKPOINT" /* x */ ()', "checkpoint() is refused"),
        ("DESCRIBE (FROM checkpoint())", "table function checkpoint() is refused"),
        ("SELECT * FROM query('SELECT * FROM checkpoint()')", "table function query()"),
        ("SELECT * FROM read_csv('/etc/passwd')", "table function read_csv() is refused"),
        ("WITH x AS (FROM read_text('/etc/passwd')) FROM x", "read_text() is refused"),
        ("FROM t WHERE a IN (SELECT 1 FROM glob('/etc/*'))", "table function glob() is refused"),
        ("SELECT (SELECT count(*) FROM read_blob('/etc/passwd'))", "read_blob() is refused"),
        ("SELECT * FROM truncate_duckdb_logs()", "truncate_duckdb_logs() is refused"),
        ("SELECT * FROM json_execute_serialized_sql('{}')", "json_execute_serialized_sql()"),
        ("SELECT nextval('s')", "nextval() is refused"),
        ("SELECT list_transform([1], x -> setval('s', 9))", "setval() is refused"),
        ("EXPLAIN SELECT nextval('s')", "nextval() is refused"),
        ("SELECT write_log('x')", "write_log() is refused"),
        ("", "no SQL statement given"),
    ],
)
def test_writing_statements_are_refused_and_change_nothing(
    con: duckdb.DuckDBPyConnection, sql: str, refusal: str
) -> None:
    with pytest.raises(ReadOnlyViolation, match=re.escape(refusal)) as refused:
        run_readonly(con.cursor(), sql)
    message = str(refused.value)
    assert "\n" not in message
    assert message == "no SQL statement given" or "tidemill query is read-only" in message
    assert con.sql("SELECT count(*) FROM t").fetchall() == [(2,)]
    assert con.sql("SELECT last_value FROM duckdb_sequences()").fetchall() == [(None,)]
    assert [r[0] for r in con.sql("SELECT database_name FROM duckdb_databases()").fetchall()] == [
        "memory",
        "system",
        "temp",
    ]


def test_a_query_past_its_time_is_interrupted_and_the_cursor_stays_usable(
    con: duckdb.DuckDBPyConnection,
) -> None:
    cursor = con.cursor()
    started = time.monotonic()
    with pytest.raises(QueryLimitExceeded, match=r"stopped after 0\.3 s"):
        run_readonly(cursor, "SELECT sum(hash(range)) FROM range(1000000000000)", timeout=0.3)
    assert time.monotonic() - started < 5
    assert run_readonly(cursor, "SELECT sum(a) FROM t", timeout=0.3).rows == [(3,)]


def test_each_query_is_stopped_at_its_own_deadline(con: duckdb.DuckDBPyConnection) -> None:
    slow = "SELECT sum(hash(range)) FROM range(1000000000000)"
    stopped: dict[str, float] = {}

    def run(name: str, timeout: float) -> None:
        started = time.monotonic()
        with pytest.raises(QueryLimitExceeded):
            run_readonly(con.cursor(), slow, timeout=timeout)
        stopped[name] = time.monotonic() - started

    patient = threading.Thread(target=run, args=("patient", 3.0))
    patient.start()
    time.sleep(0.2)
    run("hasty", 0.3)  # armed later with an earlier deadline: must not wait for the first
    patient.join(timeout=30)
    assert stopped["hasty"] < 2.0 and 3.0 <= stopped["patient"] < 8.0


def test_a_timeout_that_does_not_fire_leaves_no_interrupt_behind(
    con: duckdb.DuckDBPyConnection,
) -> None:
    cursor = con.cursor()
    for _ in range(50):
        assert run_readonly(cursor, "SELECT sum(a) FROM t", timeout=0.05).rows == [(3,)]
    time.sleep(0.1)  # any deadline left armed would have fired by now
    assert cursor.execute("SELECT count(*) FROM range(1000000)").fetchall() == [(1000000,)]


def test_a_result_over_the_row_limit_is_refused(con: duckdb.DuckDBPyConnection) -> None:
    cursor = con.cursor()
    assert len(run_readonly(cursor, "FROM range(10)", max_rows=10).rows) == 10
    with pytest.raises(QueryLimitExceeded, match="more than 10 rows"):
        run_readonly(cursor, "FROM range(11)", max_rows=10)
    assert run_readonly(cursor, "SELECT 1", max_rows=10).rows == [(1,)]
