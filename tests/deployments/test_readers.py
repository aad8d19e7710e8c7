"""SQL readers never fail while scheduled runs write: a real `duckdb` shell and a Python
client, live over Quack, and a reader of the snapshot file."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from tidemill.cli.access import read_live
from tidemill.config.load import TidemillConfig, load_config
from tidemill.deployments.stack import stack

pytestmark = pytest.mark.slow
RUNS = 30


@pytest.mark.timeout(600)  # ~50 s alone; a loaded machine stretches the 1 s schedule
def test_three_readers_during_thirty_scheduled_runs(
    elec_config: Callable[..., TidemillConfig],
    elec_csv: Callable[..., pl.DataFrame],
    free_port: int,
    prefect_api: Callable[[int], Any],
    state_file: Callable[[Path, Path], duckdb.DuckDBPyConnection],
) -> None:
    base = elec_config(batch_rows=40, snapshot_every_seconds=0.01)
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
    counts: dict[str, list[int]] = {"shell": [], "python": [], "snapshot": []}

    def shell_reader() -> None:  # the real duckdb shell, as `tidemill sql -c` starts it
        while not stop.is_set():
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tidemill",
                    "--config",
                    str(path),
                    "sql",
                    "-c",
                    "SELECT count(*) FROM raw.elec JOIN _batches USING (batch_id)",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            found = re.findall(r"│\s+(\d+)\s+│", done.stdout)
            if done.returncode != 0 or not found:
                if "no owner serves" not in done.stderr:  # before the worker is up
                    errors.append(f"shell: {done.stderr.strip()[-300:]}")
                time.sleep(0.5)
                continue
            counts["shell"].append(int(found[-1]))

    def python_reader() -> None:  # a DuckDB client in this process, over Quack
        while not stop.is_set():
            try:
                result = read_live(config.state_dir, "SELECT count(*) FROM raw.elec")
            except ConnectionError:  # before the worker is up
                time.sleep(0.2)
                continue
            except Exception as error:  # every other failure counts
                errors.append(f"python: {error!r}")
                continue
            counts["python"].append(int(result.rows[0][0]))

    def snapshot_reader() -> None:
        snapshot = config.state_dir / "snapshot.duckdb"
        while not stop.is_set():
            if not snapshot.exists():
                time.sleep(0.1)
                continue
            try:  # by its resolved name, with the key, as docs/operations.md tells programs to
                with state_file(snapshot, config.state_dir) as con:
                    rows = con.sql(
                        "SELECT count(*) FROM raw.elec JOIN _batches USING (batch_id)"
                    ).fetchall()
                counts["snapshot"].append(int(rows[0][0]))
            except Exception as error:
                errors.append(f"snapshot: {error!r}")

    def writer() -> None:
        for n in range(1, 200):
            if stop.wait(1.0):
                return
            elec_csv(landing / f"f-{n:04d}.csv", 40 * n, 40)

    threads = [threading.Thread(target=reader) for reader in (shell_reader, python_reader)]
    threads += [threading.Thread(target=snapshot_reader), threading.Thread(target=writer)]
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
    for reader, seen in counts.items():
        assert len(seen) >= 5, (reader, len(seen))  # a shell start is seconds under load
        assert seen == sorted(seen), f"{reader} saw a count go backwards"
        assert seen[-1] > seen[0], f"{reader} never saw new rows"
