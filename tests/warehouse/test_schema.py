from pathlib import Path

import duckdb
import pytest

from tidemill.config.load import parse_config
from tidemill.warehouse.connection import open_warehouse
from tidemill.warehouse.migrate import available_migrations, migrate
from tidemill.warehouse.pipeline_tables import SchemaMismatch, ensure_pipeline_tables


def _config(**overrides: object):
    body = {
        "source": {"kind": "files", "path": "x/*.csv"},
        "event_time": "ts",
        "key": "id",
        "target": "y",
        "features": ["origin", "d"],
        "categorical": ["origin"],
        "time_features": ["hour"],
        "aggregates": [{"name": "hourly", "by": ["origin"]}],
        **overrides,
    }
    return parse_config({"pipelines": {"p": body}}, Path("/tmp/t.toml")).pipeline("p")


def test_migrations_apply_once_in_order_and_are_recorded(tmp_path: Path) -> None:
    con = open_warehouse(tmp_path / "w.duckdb")
    versions = [v for v, _, _ in available_migrations()]
    assert versions == sorted(versions) and versions[0] == 1
    assert con.sql("SELECT version FROM _schema_versions ORDER BY 1").fetchall() == [
        (v,) for v in versions
    ]
    assert migrate(con) == []  # a second run applies nothing
    con.close()
    con = open_warehouse(tmp_path / "w.duckdb")  # reopening is harmless too
    assert con.sql("SELECT count(*) FROM _schema_versions").fetchall() == [(len(versions),)]


def test_every_table_and_column_is_documented(tmp_path: Path) -> None:
    con = open_warehouse(tmp_path / "w.duckdb")
    assert ensure_pipeline_tables(con, _config())
    undocumented_tables = con.sql(
        "SELECT schema_name || '.' || table_name FROM duckdb_tables() WHERE comment IS NULL"
    ).fetchall()
    undocumented_columns = con.sql(
        "SELECT table_name || '.' || column_name FROM duckdb_columns() "
        "WHERE comment IS NULL AND NOT internal"
    ).fetchall()
    assert undocumented_tables == []
    assert undocumented_columns == []
    tables = {
        r[0]
        for r in con.sql("SELECT schema_name || '.' || table_name FROM duckdb_tables()").fetchall()
    }
    assert {
        "raw.p",
        "raw.p_quarantine",
        "raw.p_inbox",
        "clean.p",
        "agg.p_hourly",
        "ml.p_predictions",
    } <= tables


def test_pipeline_tables_are_created_once_and_a_changed_schema_is_refused(tmp_path: Path) -> None:
    con = open_warehouse(tmp_path / "w.duckdb")
    assert ensure_pipeline_tables(con, _config()) is True
    assert ensure_pipeline_tables(con, _config()) is False
    with pytest.raises(SchemaMismatch, match="different features"):
        ensure_pipeline_tables(con, _config(features=["origin", "d", "e"]))


def test_a_second_process_cannot_open_the_file_while_it_is_owned(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "w.duckdb"
    con = open_warehouse(path)
    probe = subprocess.run(
        [sys.executable, "-c", f"import duckdb; duckdb.connect({str(path)!r}, read_only=True)"],
        capture_output=True,
        text=True,
    )
    assert probe.returncode != 0 and "lock" in probe.stderr.lower()
    con.close()
    assert isinstance(duckdb.connect(str(path), read_only=True), duckdb.DuckDBPyConnection)
