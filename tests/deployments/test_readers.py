"""SQL readers never fail while scheduled runs write: through the owner and the snapshot."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from tidemill.cli.access import read_sql
from tidemill.config.load import TidemillConfig, load_config
from tidemill.deployments.stack import stack

pytestmark = pytest.mark.slow
RUNS = 20


@pytest.mark.timeout(600)  # ~35 s alone; a loaded machine stretches the 1 s schedule
def test_four_readers_during_twenty_scheduled_runs(
    elec_config: Callable[..., TidemillConfig],
    elec_csv: Callable[..., pl.DataFrame],
    free_port: int,
    prefect_api: Callable[[int], Any],
) -> None:
    base = elec_config(batch_rows=40)
    path = base.path
    path.write_text(path.read_text().replace("every_seconds = 5", "every_seconds = 1"))
    config = load_config(path)
    landing = Path(config.pipeline("elec").source.path).parent
    elec_csv(landing / "f-0000.csv", 0, 40)
    port = free_port
    api = prefect_api(port)
    stack.up(config, port=port, speed=None)
    stop = threading.Event()
    errors: list[str] = []
    reads = [0, 0, 0, 0]

    def owner_reader(slot: int) -> None:
        while not stop.is_set():
            try:
                _, where = read_sql(
                    config.state_dir, "SELECT count(*), max(batch_id) FROM raw.elec"
                )
                assert where == "owner"
                reads[slot] += 1
            except Exception as error:  # every failure counts
                errors.append(f"owner: {error!r}")

    def snapshot_reader(slot: int) -> None:
        snapshot = config.state_dir / "snapshot.duckdb"
        while not stop.is_set():
            if not snapshot.exists():
                time.sleep(0.1)
                continue
            try:  # by its resolved name, as docs/operations.md tells programs to
                with duckdb.connect(str(snapshot.resolve()), read_only=True) as con:
                    con.sql(
                        "SELECT count(*) FROM raw.elec JOIN _batches USING (batch_id)"
                    ).fetchall()
                reads[slot] += 1
            except Exception as error:
                errors.append(f"snapshot: {error!r}")

    def writer() -> None:
        for n in range(1, 200):
            if stop.wait(1.0):
                return
            elec_csv(landing / f"f-{n:04d}.csv", 40 * n, 40)

    threads = [threading.Thread(target=owner_reader, args=(i,)) for i in (0, 1)]
    threads += [threading.Thread(target=snapshot_reader, args=(i,)) for i in (2, 3)]
    threads.append(threading.Thread(target=writer))
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 420
        while (
            time.monotonic() < deadline
            and [state for _, state in api.flow_runs("elec")].count("COMPLETED") < RUNS
        ):
            time.sleep(2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        states = [state for _, state in api.flow_runs("elec")]
        stack.down(config)
    assert errors == []
    assert states.count("COMPLETED") >= RUNS
    assert "FAILED" not in states and "CRASHED" not in states
    assert min(reads) > 50
