"""Shared fixtures: a pipeline config in a temporary folder, and real flights data."""

from __future__ import annotations

import socket
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from tidemill.config.load import TidemillConfig, load_config
from tidemill.data import load_flights
from tidemill.private import restrict_umask
from tidemill.tasks.synthetic.flights import flight_events, landing_rows
from tidemill.warehouse.connection import open_readonly
from tidemill.warehouse.encryption import key_for

ELEC_TOML = """
[state]
dir = ".tidemill"

[pipelines.elec]
source = {{ kind = "files", path = "landing/elec/*.csv", format = "csv" }}
event_time = "ts"
key = "id"
target = "target"
features = ["feat_1", "feat_2"]
categorical = []
task = "classification"
model = {{ estimator = "sgd_classifier", params = {{ loss = "log_loss" }} }}
batch_rows = {batch_rows}
every_seconds = 5
"""


@pytest.fixture(scope="session", autouse=True)
def _private_umask() -> None:
    """The suite is a tidemill process too: what it creates (state and landing folders,
    before tidemill opens them) is private, as it is under `tidemill` (umask 077).
    tests/tidemill/test_private.py checks what happens under a permissive umask."""
    restrict_umask()


def read_state_file(path: Path, state_dir: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB file of a state folder (its warehouse, a snapshot by its link) opened
    read-only as tidemill opens it: with the folder's key when it is encrypted."""
    resolved = path.resolve()
    return open_readonly(resolved, key_for(resolved, state_dir))


@pytest.fixture
def state_file() -> Callable[[Path, Path], duckdb.DuckDBPyConnection]:
    """`read_state_file`, for tests."""
    return read_state_file


@pytest.fixture(scope="session")
def flight_rows() -> pl.DataFrame:
    """The first 5,000 flights as the replayer writes them (text columns)."""
    return landing_rows(flight_events(load_flights().head(5000)))


@pytest.fixture
def elec_config(tmp_path: Path) -> Callable[..., TidemillConfig]:
    """Write the issue's example config (batch_rows adjustable) and return a loader."""

    def make(batch_rows: int = 50, snapshot_every_seconds: float = 0) -> TidemillConfig:
        (tmp_path / "landing" / "elec").mkdir(parents=True, exist_ok=True)
        path = tmp_path / "tidemill.toml"
        text = textwrap.dedent(ELEC_TOML.format(batch_rows=batch_rows))
        if snapshot_every_seconds:
            text = text.replace(
                "[pipelines.elec]",
                f"[serving]\nsnapshot_every_seconds = {snapshot_every_seconds}\n\n[pipelines.elec]",
            )
        path.write_text(text)
        return load_config(path)

    return make


@pytest.fixture
def elec_csv() -> Callable[..., pl.DataFrame]:
    """Writer of synthetic elec-like CSV files (see `write_elec_csv`)."""
    return write_elec_csv


def write_elec_csv(path: Path, start: int, n: int, seed: int = 0) -> pl.DataFrame:
    """A CSV of `n` labelled rows with ids from `start`; returns what was written."""
    import numpy as np

    rng = np.random.default_rng(seed + start)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    target = ((x1 + 0.5 * x2 + rng.normal(scale=0.3, size=n)) > 0).astype(int)
    ids = np.arange(start, start + n)
    frame = pl.DataFrame(
        {
            "id": ids,
            "ts": [
                f"2024-01-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z" for i in ids
            ],
            "feat_1": x1.round(4),
            "feat_2": x2.round(4),
            "target": target,
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(path)
    return frame


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrefectApi:
    """Reads what a real Prefect server recorded (runs, events, artifacts)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/api"

    def flow_runs(self, deployment: str, flow: str = "micro-batch") -> list[tuple[str, str]]:
        """(name, state type) of the runs of deployment `flow/deployment`."""
        import httpx

        body = {
            "flows": {"name": {"any_": [flow]}},
            "deployments": {"name": {"any_": [deployment]}},
            "limit": 200,
        }
        runs: list[dict[str, Any]] = []
        while True:
            reply = httpx.post(
                f"{self.url}/flow_runs/filter", json={**body, "offset": len(runs)}, timeout=10
            )
            reply.raise_for_status()
            page = reply.json()
            runs += page
            if len(page) < 200:
                return [(r["name"], r["state_type"]) for r in runs]

    def events(self, name: str, wait: float = 15) -> list[dict[str, Any]]:
        """Events named `name` (they reach the server asynchronously: waits up to `wait` s)."""
        import httpx

        deadline = time.monotonic() + wait
        while True:
            reply = httpx.post(
                f"{self.url}/events/filter",
                json={"filter": {"event": {"name": [name]}}, "limit": 10},
                timeout=10,
            )
            reply.raise_for_status()
            events: list[dict[str, Any]] = reply.json()["events"]
            if events or time.monotonic() > deadline:
                return events
            time.sleep(1)

    def artifact_keys(self) -> set[str]:
        """Keys of the artifacts the server holds."""
        import httpx

        reply = httpx.post(f"{self.url}/artifacts/filter", json={"limit": 200}, timeout=10)
        reply.raise_for_status()
        return {a["key"] for a in reply.json() if a.get("key")}


@pytest.fixture
def prefect_api() -> Callable[[int], PrefectApi]:
    """PrefectApi for a server on a port."""
    return PrefectApi


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway PostgreSQL for the session, started like the stack's (deployments/
    postgres.py: free 127.0.0.1 port, unprivileged as root); a libpq URL of its database."""
    from tidemill.deployments.stack import postgres

    state_dir = tmp_path_factory.mktemp("postgres-source")
    url = postgres.start(state_dir)
    try:
        yield url.replace("postgresql+asyncpg://", "postgresql://", 1)
    finally:
        postgres.stop(state_dir)
