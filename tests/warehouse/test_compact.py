from pathlib import Path

import duckdb

from tidemill.warehouse.serving.compact import compact

SECRET = b"subject-00042@example.com"


def test_a_compacted_file_keeps_everything_but_the_bytes_of_deleted_rows(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    con = duckdb.connect(str(path))
    con.execute("PRAGMA force_compression = 'uncompressed'")  # so bytes can be searched
    con.execute("CREATE SCHEMA raw")
    con.execute("CREATE SEQUENCE raw.seq")
    con.execute(
        "CREATE TABLE raw.t (id BIGINT PRIMARY KEY DEFAULT nextval('raw.seq'), email VARCHAR)"
    )
    con.execute("COMMENT ON TABLE raw.t IS 'rows'")
    con.execute("COMMENT ON COLUMN raw.t.email IS 'who'")
    con.execute(
        "INSERT INTO raw.t (email) SELECT 'subject-' || lpad(i::VARCHAR, 5, '0') || '@example.com' "
        "FROM range(50000) r(i)"
    )
    con.execute("DELETE FROM raw.t WHERE email = ?", [SECRET.decode()])
    con.execute("CHECKPOINT")
    con.close()
    assert SECRET in path.read_bytes()  # DuckDB leaves deleted values in the file
    done = compact(path, "v1.5.0", {"force_compression": "uncompressed"})
    assert SECRET not in path.read_bytes() and b"subject-00043@example.com" in path.read_bytes()
    assert done.bytes_after > 0 and not (tmp_path / "w.duckdb.compact").exists()
    con = duckdb.connect(str(path))
    assert con.sql("SELECT count(*), max(id) FROM raw.t").fetchall() == [(49999, 50000)]
    assert con.sql(
        "SELECT comment FROM duckdb_columns() WHERE column_name = 'email'"
    ).fetchall() == [("who",)]
    assert con.sql("SELECT comment FROM duckdb_tables() WHERE table_name = 't'").fetchall() == [
        ("rows",)
    ]
    con.execute("INSERT INTO raw.t (email) VALUES ('new@example.com')")  # the sequence goes on
    assert con.sql("SELECT id FROM raw.t WHERE email = 'new@example.com'").fetchall() == [(50001,)]
    assert con.sql(
        "SELECT constraint_type FROM duckdb_constraints() WHERE table_name = 't' ORDER BY 1"
    ).fetchall() == [("NOT NULL",), ("PRIMARY KEY",)]
