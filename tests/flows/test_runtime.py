"""The owner's connection: readers beside the batches, and rewriting the file under them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import duckdb
import pytest

from flows.runtime import Runtime
from tidemill.config import load_config
from warehouse.connection import database_path


def _runtime(tmp_path: Path) -> Runtime:
    (tmp_path / "tidemill.toml").write_text(
        '[pipelines.p]\nsource = { kind = "files", path = "in/*.csv", format = "csv" }\n'
        'event_time = "ts"\ntarget = "y"\nfeatures = ["x"]\nclasses = [0, 1]\n'
    )
    return Runtime.open(load_config(tmp_path / "tidemill.toml"))


def test_rewriting_the_file_interrupts_readers_and_serves_the_new_file(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    runtime.con.execute("CREATE TABLE raw.t AS SELECT range AS i FROM range(1000)")
    runtime.con.execute("DELETE FROM raw.t WHERE i >= 10")
    failed: list[BaseException] = []
    started = threading.Event()

    def long_query() -> None:
        with runtime.reader() as cursor:
            started.set()
            try:  # minutes of work unless interrupted
                cursor.sql("SELECT count(*) FROM range(10_000_000_000) a").fetchall()
            except duckdb.Error as error:
                failed.append(error)

    reader = threading.Thread(target=long_query)
    reader.start()
    assert started.wait(10)
    time.sleep(0.3)  # the query is running
    clock = time.monotonic()
    done = runtime.rewrite_file()
    reader.join(10)
    assert time.monotonic() - clock < 10 and not reader.is_alive()
    assert failed and "interrupt" in str(failed[0]).lower()
    assert done.bytes_after > 0 and database_path(runtime.state_dir).exists()
    with runtime.reader() as cursor:
        assert cursor.sql("SELECT count(*) FROM raw.t").fetchall() == [(10,)]
    runtime.con.execute("INSERT INTO raw.t VALUES (99)")  # the writer works on the new file
    runtime.close()


def test_a_reader_that_does_not_finish_stops_the_rewrite_with_a_clear_error(
    tmp_path: Path,
) -> None:
    runtime = _runtime(tmp_path)
    with runtime.reader(), pytest.raises(RuntimeError, match="readers still hold"):
        runtime.rewrite_file(wait_seconds=0.2)  # our own reader: it cannot finish meanwhile
    runtime.close()
