"""Start, stop and probe a local Prefect server that lives in the project's state dir.

The server runs as `python -m prefect server start` in its own session (process
group), so a Ctrl-C in the terminal that started it reaches only our code, which
decides when to stop it. Its database is PostgreSQL (deployments/stack/postgres.py, started
first, stopped last) or, with the setting `prefect_database = "sqlite"`, SQLite; the
database, profiles and logs stay under `<state_dir>`; nothing is written to `~/.prefect`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

from tidemill import private
from tidemill.deployments.stack import postgres, processes
from tidemill.settings import get_settings

HOST = "127.0.0.1"


def server_env(state_dir: Path, port: int, database_url: str | None = None) -> dict[str, str]:
    """Return the PREFECT_* variables for the server and for its client processes.

    The result is an overlay: merge it over `os.environ`. It must be in the
    environment before `prefect` is imported, because Prefect reads its
    settings once at import (in-process, use `prefect.settings.temporary_settings`).
    `database_url` (SQLAlchemy, async driver) is the server's database; without it
    the server uses SQLite in `<state_dir>/prefect` (PREFECT_HOME, created here).
    Prefect ignores a variable it does not know: tests check every name.
    """
    home = state_dir / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    retention = f"PT{round(get_settings().prefect_retention_hours * 3600)}S"
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://{HOST}:{port}/api",
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "true",
        # The default (60 s / 1 h ahead) is made for hourly schedules; a
        # few-second cadence needs the scheduler to look often and not far.
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": "PT1M",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        # INFO would log an access line for every poll (two per second).
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "PREFECT_LOGGING_LEVEL": "INFO",
        # A run every 5 s is 17,280 flow runs a day per pipeline, each with its states,
        # logs, artifact and events. By default Prefect keeps flow runs forever and
        # events 7 days; delete both after `prefect_retention_hours` (hourly vacuum).
        "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
        "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": retention,
        "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": retention,
    }
    if database_url is not None:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    return env


def is_healthy(port: int, timeout: float = 2.0) -> bool:
    """Return True if a Prefect API on 127.0.0.1:`port` answers `GET /api/health`."""
    url = f"http://{HOST}:{port}/api/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200 and response.read().strip() == b"true"
    except (OSError, ValueError):
        return False


NAME = "prefect-server"
MARKER = ("prefect", "server", "start")


def start_server(
    state_dir: Path,
    port: int = 4200,
    timeout: float = 120,
    database: Literal["postgres", "sqlite"] | None = None,
) -> int:
    """Start the state dir's Prefect server on `port` unless it already runs; return its pid.

    `database` defaults to the setting `prefect_database`; for "postgres" the state
    dir's PostgreSQL is started first (or reused). Raises RuntimeError if the port
    is taken by anything else, if PostgreSQL does not start, if the server exits
    during start-up, or if it is not healthy within `timeout` seconds (it is then
    stopped again, with its PostgreSQL). The first start migrates the database: about
    8 s on PostgreSQL on an idle 2-core machine, 45 s seen under a load of 15.
    """
    private.state_folder(state_dir)
    database = database or get_settings().prefect_database
    pid = processes.running(state_dir, NAME, MARKER)
    if pid is not None:
        running_port = _port_of(pid)
        if running_port != port:
            raise RuntimeError(
                f"the Prefect server of {state_dir} already runs on port "
                f"{running_port} (pid {pid}); stop it first or use that port"
            )
        if database == "postgres":
            postgres.start(state_dir)  # in case only the database was stopped or killed
        _wait_healthy(pid, port, timeout, state_dir)
        return pid
    processes.pid_file(state_dir, NAME).unlink(missing_ok=True)

    if _port_in_use(port):
        what = "a Prefect server" if is_healthy(port) else "another process"
        raise RuntimeError(
            f"port {port} is already used by {what} not started from {state_dir}; "
            "stop it or choose another port"
        )
    database_url = postgres.start(state_dir) if database == "postgres" else None
    env = {**os.environ, **server_env(state_dir, port, database_url)}
    command = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    pid = processes.spawn(state_dir, NAME, command, env, state_dir)
    try:
        _wait_healthy(pid, port, timeout, state_dir)
    except RuntimeError:
        stop_server(state_dir)
        raise
    return pid


def stop_server(state_dir: Path, timeout: float = 20) -> bool:
    """Stop the state dir's Prefect server, then its PostgreSQL; return True if either ran.

    Sends SIGTERM to the server's process group, then SIGKILL after `timeout`
    seconds; removes the pid file, also when it is stale. PostgreSQL gets a fast
    shutdown (whatever `prefect_database` says now, so a switch leaves nothing behind).
    """
    server = processes.stop(state_dir, NAME, MARKER, timeout)
    database = postgres.stop(state_dir)
    return server or database


def _port_of(pid: int) -> int | None:
    args = processes.cmdline(pid)
    with contextlib.suppress(ValueError, IndexError):
        return int(args[args.index("--port") + 1])
    return None


def _port_in_use(port: int) -> bool:
    # SO_REUSEADDR as uvicorn uses it, so sockets in TIME_WAIT do not count.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def _wait_healthy(pid: int, port: int, timeout: float, state_dir: Path) -> None:
    deadline = time.monotonic() + timeout
    while not is_healthy(port):
        if not processes.alive(pid):
            log = processes.log_file(state_dir, NAME)
            raise RuntimeError(f"the Prefect server exited during start-up; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the Prefect server (pid {pid}) was not healthy on port {port} "
                f"after {timeout:.0f} s"
            )
        time.sleep(0.2)
