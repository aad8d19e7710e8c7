import duckdb
import pytest

from warehouse.readonly import ReadOnlyViolation, run_readonly


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE TABLE t (a INTEGER)")
    con.execute("INSERT INTO t VALUES (1), (2)")
    return con


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT sum(a) FROM t",
        "FROM t",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "DESCRIBE t",
        "SUMMARIZE t",
        "EXPLAIN SELECT 1",
    ],
)
def test_reading_statements_run(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    assert run_readonly(con.cursor(), sql).rows


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("INSERT INTO t VALUES (3)", "INSERT"),
        ("DELETE FROM t", "DELETE"),
        ("DROP TABLE t", "DROP"),
        ("SELECT 1; UPDATE t SET a = 0", "UPDATE"),
        ("EXPLAIN ANALYZE DELETE FROM t", "DELETE"),
        ("COPY t TO '/tmp/x.csv'", "COPY"),
        ("ATTACH ':memory:' AS m", "ATTACH"),
        ("CHECKPOINT", "CALL"),
    ],
)
def test_writing_statements_are_refused_and_change_nothing(
    con: duckdb.DuckDBPyConnection, sql: str, kind: str
) -> None:
    with pytest.raises(ReadOnlyViolation, match=f"{kind} statements are refused"):
        run_readonly(con.cursor(), sql)
    assert con.sql("SELECT count(*) FROM t").fetchall() == [(2,)]
