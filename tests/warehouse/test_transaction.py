"""transaction(): all of the block or none of it, and the block's own error."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from tidemill.warehouse.connection import open_warehouse
from tidemill.warehouse.transaction import transaction


def _con(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    con = open_warehouse(tmp_path / "w.duckdb")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    return con


def test_the_block_commits_as_one(tmp_path: Path) -> None:
    con = _con(tmp_path)
    with transaction(con):
        con.execute("INSERT INTO t VALUES (1), (2)")
        con.execute("INSERT INTO t VALUES (3)")
    assert con.sql("SELECT count(*) FROM t").fetchall() == [(3,)]


def test_a_failed_statement_rolls_back_everything_and_its_own_error_propagates(
    tmp_path: Path,
) -> None:
    con = _con(tmp_path)
    with pytest.raises(duckdb.ConstraintException, match="duplicate key"), transaction(con):
        con.execute("INSERT INTO t VALUES (1)")
        con.execute("INSERT INTO t VALUES (1)")  # aborts DuckDB's transaction
    assert con.sql("SELECT count(*) FROM t").fetchall() == [(0,)]
    with transaction(con):  # the connection is usable again
        con.execute("INSERT INTO t VALUES (1)")
    assert con.sql("SELECT count(*) FROM t").fetchall() == [(1,)]


def test_a_python_error_in_the_block_rolls_back(tmp_path: Path) -> None:
    con = _con(tmp_path)
    with pytest.raises(KeyError), transaction(con):
        con.execute("INSERT INTO t VALUES (7)")
        raise KeyError("computed after the write")
    assert con.sql("SELECT count(*) FROM t").fetchall() == [(0,)]
