"""The whole local stack for real: Prefect server, worker process, scheduled runs in it."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from deployments import processes, stack
from tidemill.access import read_sql
from tidemill.config import TidemillConfig

pytestmark = pytest.mark.slow


def test_up_runs_scheduled_batches_in_the_worker_and_sql_works_meanwhile(
    elec_config: Callable[..., TidemillConfig],
    elec_csv: Callable[..., pl.DataFrame],
    free_port: int,
    prefect_api: Callable[[int], Any],
) -> None:
    config = elec_config(batch_rows=40)
    landing = Path(config.pipeline("elec").source.path).parent
    elec_csv(landing / "a.csv", 0, 200)
    port = free_port
    api = prefect_api(port)
    started = stack.up(config, port=port, speed=None)
    try:
        assert (
            stack.up(config, port=port, speed=None).worker_pid == started.worker_pid
        )  # idempotent
        deadline = time.monotonic() + 90
        rows = 0
        while time.monotonic() < deadline and rows < 200:
            time.sleep(1)
            result, where = read_sql(config.state_dir, "SELECT count(*) FROM raw.elec")
            rows = result.rows[0][0]
        assert where == "owner"  # routed into the worker while it writes
        assert rows == 200
        # any DuckDB client can open the published snapshot while the worker holds the file
        deadline = time.monotonic() + 15
        published = 0
        while time.monotonic() < deadline and published < 200:
            time.sleep(1)
            with duckdb.connect(str(config.state_dir / "snapshot.duckdb"), read_only=True) as snap:
                published = snap.sql("SELECT count(*) FROM raw.elec").fetchall()[0][0]
        assert published == 200
        elec_csv(landing / "b.csv", 200, 40)  # new data arrives while it runs
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and rows < 240:
            time.sleep(1)
            rows = read_sql(config.state_dir, "SELECT count(*) FROM raw.elec")[0].rows[0][0]
        assert rows == 240
        # a file of bad rows: quarantined, and the spike is a Prefect event automations can use
        (landing / "c.csv").write_text(
            "id,ts,feat_1,feat_2,target\n" + "".join(f"{900 + i},soon,x,y,1\n" for i in range(10))
        )
        deadline = time.monotonic() + 30
        quarantined = 0
        while time.monotonic() < deadline and quarantined < 10:
            time.sleep(1)
            quarantined = read_sql(config.state_dir, "SELECT count(*) FROM raw.elec_quarantine")[
                0
            ].rows[0][0]
        assert quarantined == 10
        assert api.events("tidemill.quarantine.spike")[0]["payload"]["rows_quarantined"] == 10
        assert {"elec-batch", "elec-metrics"} <= api.artifact_keys()
        runs = api.flow_runs("elec")
        states = [state for _, state in runs]
        # 7 batches (6 of 40 rows, 1 of bad ones); a run takes every full batch waiting
        assert states.count("COMPLETED") >= 3
        assert "FAILED" not in states and "CRASHED" not in states
        assert any(name.startswith("elec-batch-") for name, _ in runs)
        versions = read_sql(
            config.state_dir, "SELECT count(*), max(rows_seen) FROM ml.model_versions"
        )[0]
        assert versions.rows[0] == (6, 240)  # one version per batch of 40, every row learned once
    finally:
        stopped = stack.down(config)
    assert {"worker", "prefect-server"} <= set(stopped)
    assert processes.running(config.state_dir, *stack.WORKER) is None
    assert stack.down(config) == []  # idempotent
    # with the owner gone, SQL reads the file itself
    assert read_sql(config.state_dir, "SELECT count(*) FROM raw.elec") == (
        read_sql(config.state_dir, "SELECT count(*) FROM raw.elec")[0],
        "file",
    )


def test_a_busy_port_gives_a_clear_message(elec_config: Callable[..., TidemillConfig]) -> None:
    config = elec_config()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(
            stack.StackError, match=f"port {port} is already used by another process"
        ):
            stack.up(config, port=port, speed=None)
