"""Background processes of the local stack, tracked by pid files in the state folder.

Each process runs in its own session (process group), so a Ctrl-C in the terminal of
`tidemill up` reaches only `up`, which then stops them in order. A pid file whose
process is gone, or whose pid now belongs to another program, counts as not running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

# Popen objects of children started here, so their exit status is collected
# (an unreaped child stays a zombie that kill(pid, 0) still reports alive).
_children: dict[int, subprocess.Popen[bytes]] = {}


def pid_file(state_dir: Path, name: str) -> Path:
    """Where process `name` of this state folder records its pid."""
    return state_dir / "run" / f"{name}.pid"


def log_file(state_dir: Path, name: str) -> Path:
    """Where process `name` writes its output."""
    return state_dir / "logs" / f"{name}.log"


def alive(pid: int) -> bool:
    """True if `pid` runs (and is not a zombie child of ours)."""
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


def cmdline(pid: int) -> list[str]:
    """The command line of `pid` (empty when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def running(state_dir: Path, name: str, marker: Sequence[str]) -> int | None:
    """The pid of process `name` if it runs and its command line holds every `marker`."""
    try:
        pid = int(pid_file(state_dir, name).read_text().strip())
    except (OSError, ValueError):
        return None
    child = _children.get(pid)
    if child is not None and child.poll() is None:
        # our own child, still running: right after the fork its command line is
        # still ours (the markers would not match yet)
        return pid
    args = cmdline(pid)
    if alive(pid) and all(m in args for m in marker):
        return pid
    return None


def spawn(state_dir: Path, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> int:
    """Start `argv` in its own session, output to the log file; record and return its pid."""
    log = log_file(state_dir, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_path = pid_file(state_dir, name)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    try:
        pid_path.write_text(f"{proc.pid}\n")
    except OSError:
        # e.g. a full disk: a process nobody can find would never be stopped, and a
        # supervisor would start a second one beside it
        proc.kill()
        proc.wait()
        _children.pop(proc.pid, None)
        raise
    return proc.pid


def stop(state_dir: Path, name: str, marker: Sequence[str], timeout: float = 20.0) -> bool:
    """SIGTERM process `name`'s group, SIGKILL after `timeout`; True if it was running.

    Removes the pid file, also a stale one.
    """
    pid = running(state_dir, name, marker)
    if pid is not None:
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + wait
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not alive(pid):
                break
        _children.pop(pid, None)
    pid_file(state_dir, name).unlink(missing_ok=True)
    return pid is not None


def remembered_port(path: Path, host: str, *, wait: float, fresh: bool = False) -> int:
    """The port kept in `path` while it is free, else a new free one (kept in `path`).

    A server killed a moment ago can still hold its port, so a taken port is waited for
    up to `wait` seconds before a new one is chosen: clients keep the URL they have.
    `fresh` skips the kept port (it was taken by another program meanwhile)."""
    if not fresh:
        with contextlib.suppress(OSError, ValueError):
            port = int(path.read_text())
            deadline = time.monotonic() + wait
            while port_in_use(host, port) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not port_in_use(host, port):
                return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        port = int(sock.getsockname()[1])
    temporary = path.with_suffix(".tmp")
    temporary.write_text(f"{port}\n")
    temporary.rename(path)
    return port


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on (or holds) `host:port`."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False
