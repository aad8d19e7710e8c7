"""Start, stop and probe a local Prefect server that lives in the project's state dir.

The server runs as `python -m prefect server start` in its own session (process
group), so a Ctrl-C in the terminal that started it reaches only our code, which
decides when to stop it. Its SQLite database, profiles and logs stay under
`<state_dir>`; nothing is written to `~/.prefect`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"

# Popen objects of servers started by this process, kept so that their exit
# status is collected (an unreaped child stays a zombie that `kill(pid, 0)`
# still reports as alive).
_children: dict[int, subprocess.Popen[bytes]] = {}


def server_env(state_dir: Path, port: int) -> dict[str, str]:
    """Return the PREFECT_* variables for the server and for its client processes.

    The result is an overlay: merge it over `os.environ`. It must be in the
    environment before `prefect` is imported, because Prefect reads its
    settings once at import (in-process, use `prefect.settings.temporary_settings`).
    Creates `<state_dir>/prefect` (PREFECT_HOME), which holds the SQLite database.
    """
    home = state_dir / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    return {
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
    }


def is_healthy(port: int, timeout: float = 2.0) -> bool:
    """Return True if a Prefect API on 127.0.0.1:`port` answers `GET /api/health`."""
    url = f"http://{HOST}:{port}/api/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200 and response.read().strip() == b"true"
    except (OSError, ValueError):
        return False


def start_server(state_dir: Path, port: int = 4200, timeout: float = 60) -> int:
    """Start the state dir's Prefect server on `port` unless it already runs; return its pid.

    Raises RuntimeError if the port is taken by anything else, if the server
    exits during start-up, or if it is not healthy within `timeout` seconds
    (it is then stopped again).
    """
    pid_file = _pid_file(state_dir)
    pid = _read_pid(pid_file)
    if pid is not None and _is_our_server(pid):
        running_port = _port_of(pid)
        if running_port != port:
            raise RuntimeError(
                f"the Prefect server of {state_dir} already runs on port "
                f"{running_port} (pid {pid}); stop it first or use that port"
            )
        _wait_healthy(pid, port, timeout, state_dir)
        return pid
    pid_file.unlink(missing_ok=True)

    if _port_in_use(port):
        what = "a Prefect server" if is_healthy(port) else "another process"
        raise RuntimeError(
            f"port {port} is already used by {what} not started from {state_dir}; "
            "stop it or choose another port"
        )

    log_path = state_dir / "logs" / "prefect-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **server_env(state_dir, port)}
    command = [sys.executable, "-m", "prefect", "server", "start"]
    command += ["--host", HOST, "--port", str(port)]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=state_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    pid_file.write_text(f"{proc.pid}\n")
    try:
        _wait_healthy(proc.pid, port, timeout, state_dir)
    except RuntimeError:
        stop_server(state_dir)
        raise
    return proc.pid


def stop_server(state_dir: Path, timeout: float = 20) -> bool:
    """Stop the state dir's Prefect server; return True if one was running.

    Sends SIGTERM to the server's process group, then SIGKILL after `timeout`
    seconds. Removes the pid file, also when it is stale.
    """
    pid_file = _pid_file(state_dir)
    pid = _read_pid(pid_file)
    if pid is None or not _is_our_server(pid):
        pid_file.unlink(missing_ok=True)
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _alive(pid):
            break
    pid_file.unlink(missing_ok=True)
    _children.pop(pid, None)
    return True


def _pid_file(state_dir: Path) -> Path:
    return state_dir / "run" / "prefect-server.pid"


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_our_server(pid: int) -> bool:
    """A pid from our pid file may have been reused by an unrelated process."""
    if not _alive(pid):
        return False
    args = _cmdline(pid)
    return "prefect" in args and "server" in args and "start" in args


def _port_of(pid: int) -> int | None:
    args = _cmdline(pid)
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
        if not _alive(pid):
            log = state_dir / "logs" / "prefect-server.log"
            raise RuntimeError(f"the Prefect server exited during start-up; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the Prefect server (pid {pid}) was not healthy on port {port} "
                f"after {timeout:.0f} s"
            )
        time.sleep(0.2)
