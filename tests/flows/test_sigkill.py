"""Exactly once under SIGKILL: a real worker process is killed at random points."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from tidemill.cli.access import read_live
from tidemill.errors import TidemillError
from tidemill.warehouse.artifacts import sha256_of
from tidemill.warehouse.connection import open_readonly
from tidemill.warehouse.encryption import key_for

REPO = Path(__file__).parents[2]
pytestmark = pytest.mark.slow


def _start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tidemill", "--config", str(config), "run", "flights", "--drain"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _batches(state_dir: Path) -> int:
    """Committed batches, asked of the running worker live, over Quack."""
    try:
        result = read_live(state_dir, "SELECT count(*) FROM _batches WHERE status = 'committed'")
    except (OSError, TidemillError):  # no owner, or not yet the tables
        return -1
    return int(result.rows[0][0])


def test_killing_the_worker_anywhere_loses_and_duplicates_nothing(
    tmp_path: Path, flight_rows: pl.DataFrame
) -> None:
    config = tmp_path / "tidemill.toml"
    config.write_text(
        (REPO / "tidemill.toml").read_text().replace("batch_rows = 500", "batch_rows = 50")
    )
    landing = tmp_path / ".tidemill" / "landing" / "flights"
    landing.mkdir(parents=True)
    rows = flight_rows.head(4000)
    for i in range(8):
        rows.slice(i * 500, 500).write_csv(landing / f"part-{i}.csv")

    rng = random.Random(7)
    state_dir = tmp_path / ".tidemill"
    kills = committed = 0
    for _ in range(8):
        worker = _start(config)
        # wait until this worker has committed a batch of its own, then kill it at a random
        # moment of the following ones (mid-validation, mid-learning, mid-commit, ...)
        while worker.poll() is None and (now := _batches(state_dir)) <= committed:
            time.sleep(0.02)
        committed = max(committed, now)
        time.sleep(rng.uniform(0.0, 0.3))
        if worker.poll() is not None:
            break
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        kills += 1
    finished = _start(config)
    _, stderr = finished.communicate(timeout=120)
    assert finished.returncode == 0, stderr.decode()
    assert kills == 8

    database = tmp_path / ".tidemill" / "warehouse.duckdb"
    con = open_readonly(database, key_for(database, tmp_path / ".tidemill"))
    one = lambda sql: con.sql(sql).fetchall()[0][0]  # noqa: E731
    labelled = int(rows["late"].is_not_null().sum())
    assert one("SELECT count(*) FROM raw.flights") == 4000
    assert one("SELECT count(DISTINCT id) FROM raw.flights") == 4000
    assert one("SELECT count(*) FROM raw.flights_inbox") == 0
    assert one("SELECT count(*) FROM clean.flights") == 4000
    # the model never learned a row twice, nor skipped one
    assert one("SELECT rows_seen FROM ml.model_versions WHERE status = 'champion'") == labelled
    assert one("SELECT sum(rows_learned) FROM _batches WHERE status = 'committed'") == labelled
    # one version and one set of metrics per candidate (main, mlp) per committed batch,
    # lineage unbroken
    committed = one("SELECT count(*) FROM _batches WHERE status = 'committed'")
    assert one("SELECT count(*) FROM ml.model_versions") == 2 * committed
    assert one("SELECT count(*) FROM ml.batch_metrics WHERE metric = 'accuracy'") == 2 * (
        committed - 1
    )
    assert (
        one(
            "SELECT count(*) FROM ml.model_versions v LEFT JOIN ml.model_versions p "
            "ON p.version = v.parent_version WHERE v.parent_version IS NOT NULL AND p.version IS NULL"
        )
        == 0
    )
    # every registry row points at its artifact, unaltered
    for path, sha in con.sql("SELECT artifact_path, sha256 FROM ml.model_versions").fetchall():
        assert sha256_of(tmp_path / ".tidemill", tmp_path / ".tidemill" / path) == sha
