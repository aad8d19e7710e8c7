"""The owner's connection: readers beside the batches, and rewriting the file under them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from tidemill.config.load import load_config
from tidemill.flows.engine.runtime import Runtime
from tidemill.warehouse.connection import database_path
from tidemill.warehouse.serving import snapshot


def _runtime(tmp_path: Path) -> Runtime:
    (tmp_path / "tidemill.toml").write_text(
        "[serving]\nsnapshot_every_seconds = 0.01\n\n"
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


def _slow_copy(source: str | Path, target: str | Path) -> None:
    """A disk that copies 4 MiB per 50 ms."""
    with open(source, "rb") as reading, open(target, "wb") as writing:
        while chunk := reading.read(4 << 20):
            writing.write(chunk)
            time.sleep(0.05)


def test_a_snapshot_copied_while_batches_commit_is_the_checkpointed_state(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    state_file: Callable[[Path, Path], duckdb.DuckDBPyConnection],
) -> None:
    """The copy runs beside the writer: commits (large ones write blocks straight into the
    file) must not tear it, and no checkpoint may run under it."""
    monkeypatch.setattr(snapshot.shutil, "copyfile", _slow_copy)
    runtime = _runtime(tmp_path)
    con = runtime.con
    con.execute("CREATE TABLE raw.big AS SELECT range AS i, random() AS v FROM range(4000000)")
    runtime.publication.changed()
    runtime.after_cycle(committed=True)  # checkpoints, then starts the copy
    assert runtime.publication.publisher.busy
    writes = 0
    while runtime.publication.publisher.busy:
        with runtime.lock:  # as a batch does; 150k rows: written straight to the file
            con.execute("INSERT INTO raw.big SELECT range, 0.5 FROM range(150000)")
        runtime.after_cycle(committed=True)  # no checkpoint while the copy runs
        writes += 1
        time.sleep(0.05)  # batches come at a cadence: back to back, the file outgrew the copy
    runtime.publication.publisher.wait()
    assert writes >= 3 and runtime.publication.publisher.published == 1
    with state_file(runtime.state_dir / "snapshot.duckdb", runtime.state_dir) as snap:
        assert snap.sql("SELECT count(*), count(DISTINCT i) FROM raw.big").fetchall() == [
            (4_000_000, 4_000_000)
        ]
    runtime.close()  # publishes the rest before closing
    with state_file(runtime.state_dir / "snapshot.duckdb", runtime.state_dir) as snap:
        assert snap.sql("SELECT count(*) FROM raw.big").fetchall() == [
            (4_000_000 + writes * 150_000,)
        ]
