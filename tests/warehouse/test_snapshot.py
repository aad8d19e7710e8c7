"""Publishing the read-only snapshot: numbered copies that never change, behind a symlink."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import duckdb
import pytest

from tidemill.warehouse.serving.snapshot import (
    SNAPSHOT_DIR,
    open_snapshot,
    publish_snapshot,
    snapshot_path,
)


def _database(path: Path, rows: int) -> Path:
    """A file whose metadata points at blocks a smaller copy does not have."""
    with duckdb.connect(str(path)) as con:
        con.execute(
            "CREATE TABLE t AS SELECT range AS i, random() AS r, 'row ' || range AS s "
            f"FROM range({rows})"
        )
    return path


def test_the_symlink_points_at_the_newest_copy_and_one_previous_is_kept(tmp_path: Path) -> None:
    database = _database(tmp_path / "warehouse.duckdb", 10)
    snapshot = snapshot_path(tmp_path)
    first = publish_snapshot(database, snapshot)
    second = publish_snapshot(database, snapshot)
    third = publish_snapshot(database, snapshot)
    assert snapshot.is_symlink() and snapshot.resolve() == third
    assert sorted((tmp_path / SNAPSHOT_DIR).glob("*/*")) == [second, third]
    assert not first.exists() and third.name == "snapshot.duckdb"
    with open_snapshot(snapshot) as con:  # the catalog keeps its name from one copy to the next
        assert con.sql("SELECT count(*) FROM snapshot.t").fetchall() == [(10,)]
    last = publish_snapshot(database, snapshot, keep_previous=False)  # after an erasure
    assert list((tmp_path / SNAPSHOT_DIR).glob("*/*")) == [last]


def test_a_regular_snapshot_file_of_an_older_version_is_replaced(tmp_path: Path) -> None:
    database = _database(tmp_path / "warehouse.duckdb", 10)
    snapshot = snapshot_path(tmp_path)
    snapshot.write_bytes(database.read_bytes())
    publish_snapshot(database, snapshot)
    assert snapshot.is_symlink()


def test_nothing_published_yet_is_a_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_snapshot(snapshot_path(tmp_path))


@pytest.mark.timeout(120)
def test_readers_opening_the_snapshot_while_it_is_republished_never_see_a_mixed_file(
    tmp_path: Path,
) -> None:
    """DuckDB opens a file three times while connecting: a copy renamed over the path in
    between gave "Could not read enough bytes" (CI, stop 11). Copies of alternating sizes
    are published every 10 ms while two threads connect and scan."""
    sources = [_database(tmp_path / f"v{k}.duckdb", n) for k, n in enumerate((300_000, 20_000))]
    snapshot = snapshot_path(tmp_path / "state")
    snapshot.parent.mkdir()
    publish_snapshot(sources[0], snapshot)
    stop = threading.Event()
    errors: list[str] = []
    reads = [0, 0]

    def reader(slot: int) -> None:
        while not stop.is_set():
            try:
                with open_snapshot(snapshot) as con:
                    count, total = con.sql("SELECT count(*), sum(i) FROM t").fetchall()[0]
                assert total == count * (count - 1) // 2
                reads[slot] += 1
            except Exception as error:  # every failure counts
                errors.append(repr(error))

    threads = [threading.Thread(target=reader, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    try:
        for n in range(150):  # 100 times as often as a worker publishes at most
            publish_snapshot(sources[n % 2], snapshot)
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert min(reads) > 20
