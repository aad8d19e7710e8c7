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

from tidemill import layout
from tidemill.cli.access import read_sql
from tidemill.cli.sql import write_live_catalog
from tidemill.config.load import TidemillConfig, load_config
from tidemill.deployments.stack import processes, stack
from tidemill.deployments.stack.supervisor import worker_processes

pytestmark = pytest.mark.slow


def test_up_runs_scheduled_batches_in_two_workers_and_sql_works_meanwhile(
    elec_config: Callable[..., TidemillConfig],
    elec_csv: Callable[..., pl.DataFrame],
    free_port: int,
    prefect_api: Callable[[int], Any],
    state_file: Callable[[Path, Path], duckdb.DuckDBPyConnection],
) -> None:
    """Two pipelines on two workers (`up --workers 2`), each owning its warehouse file."""
    base = elec_config(batch_rows=40, snapshot_every_seconds=0.01)
    text = base.path.read_text()
    base.path.write_text(text + text[text.index("[pipelines.elec]") :].replace("elec", "grid"))
    config = load_config(base.path)
    landing = Path(config.pipeline("elec").source.path).parent
    elec_csv(landing / "a.csv", 0, 200)
    elec_csv(Path(config.pipeline("grid").source.path).parent / "a.csv", 0, 80)
    port = free_port
    api = prefect_api(port)
    started = stack.up(config, port=port, speed=None, workers=2)
    elec, grid = layout.owner_config(config, "elec"), layout.owner_config(config, "grid")
    try:
        assert sorted(started.worker_pids) == ["worker-w1", "worker-w2"]
        assert (elec.state_dir.name, grid.state_dir.name) == ("w1", "w2")
        again = stack.up(config, port=port, speed=None, workers=2)
        assert again.worker_pids == started.worker_pids  # idempotent
        with pytest.raises(layout.LayoutError, match="laid out for 2 workers"):
            stack.up(config, port=port, speed=None, workers=1)
        deadline = time.monotonic() + 90
        rows = 0
        while time.monotonic() < deadline and rows < 200:
            time.sleep(1)
            result, where = read_sql(elec.state_dir, "SELECT count(*) FROM raw.elec")
            rows = result.rows[0][0]
        assert where == "owner"  # routed into the worker while it writes
        assert rows == 200
        # the other worker stored the other pipeline, in its own file
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline
            and read_sql(grid.state_dir, "SELECT count(*) FROM raw.grid")[0].rows[0][0] < 80
        ):
            time.sleep(1)
        assert read_sql(grid.state_dir, "SELECT count(*) FROM raw.grid")[0].rows[0][0] == 80
        tables = "SELECT count(*) FROM duckdb_tables() WHERE table_name = '{}'"
        assert read_sql(grid.state_dir, tables.format("elec"))[0].rows == [(0,)]
        # any DuckDB client can open the published snapshot while the worker holds the file
        deadline = time.monotonic() + 15
        published = (0, 0)
        while time.monotonic() < deadline and published != (200, 80):
            time.sleep(1)
            if not all((o.state_dir / "snapshot.duckdb").exists() for o in (elec, grid)):
                continue  # the first copy is still being written
            with state_file(elec.state_dir / "snapshot.duckdb", elec.state_dir) as snap:
                in_elec = snap.sql("SELECT count(*) FROM raw.elec").fetchall()[0][0]
            with state_file(grid.state_dir / "snapshot.duckdb", grid.state_dir) as snap:
                published = (in_elec, snap.sql("SELECT count(*) FROM raw.grid").fetchall()[0][0])
        assert published == (200, 80)  # each worker publishes its own, in the background
        # ... and every worker's warehouse live at once through the catalog (over Quack)
        catalog, owners = write_live_catalog(config)
        assert owners == ["w1", "w2"] and catalog.stat().st_mode & 0o777 == 0o600
        with duckdb.connect() as con:
            con.execute(catalog.read_text())
            counts = [
                con.sql("SELECT count(*) FROM raw.elec").fetchall()[0]
                + con.sql("FROM w2.query('SELECT count(*) FROM raw.grid')").fetchall()[0]
            ]
        assert counts == [(200, 80)]
        elec_csv(landing / "b.csv", 200, 40)  # new data arrives while it runs
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and rows < 240:
            time.sleep(1)
            rows = read_sql(elec.state_dir, "SELECT count(*) FROM raw.elec")[0].rows[0][0]
        assert rows == 240
        # a file of bad rows: quarantined, and the spike is a Prefect event automations can use
        (landing / "c.csv").write_text(
            "id,ts,feat_1,feat_2,target\n" + "".join(f"{900 + i},soon,x,y,1\n" for i in range(10))
        )
        deadline = time.monotonic() + 30
        quarantined = 0
        while time.monotonic() < deadline and quarantined < 10:
            time.sleep(1)
            quarantined = read_sql(elec.state_dir, "SELECT count(*) FROM raw.elec_quarantine")[
                0
            ].rows[0][0]
        assert quarantined == 10
        assert api.events("tidemill.quarantine.spike")[0]["payload"]["rows_quarantined"] == 10
        assert {"elec-batch", "elec-metrics", "grid-batch"} <= api.artifact_keys()
        runs = api.flow_runs("elec")
        states = [state for _, state in runs]
        # 7 batches (6 of 40 rows, 1 of bad ones); a run takes every full batch waiting
        assert states.count("COMPLETED") >= 3
        assert "FAILED" not in states and "CRASHED" not in states
        assert any(name.startswith("elec-batch-") for name, _ in runs)
        assert "COMPLETED" in [state for _, state in api.flow_runs("grid")]
        versions = read_sql(
            elec.state_dir, "SELECT count(*), max(rows_seen) FROM ml.model_versions"
        )[0]
        assert versions.rows[0] == (6, 240)  # one version per batch of 40, every row learned once
    finally:
        stopped = stack.down(config)
    assert {"worker-w1", "worker-w2", "prefect-server"} <= set(stopped)
    assert all(
        processes.running(config.state_dir, w.name, w.marker) is None
        for w in worker_processes(config)
    )
    assert stack.down(config) == []  # idempotent
    # with the owner gone, SQL reads the file itself
    assert read_sql(elec.state_dir, "SELECT count(*) FROM raw.elec") == (
        read_sql(elec.state_dir, "SELECT count(*) FROM raw.elec")[0],
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
