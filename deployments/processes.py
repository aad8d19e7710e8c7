"""Background processes of the local stack, tracked by pid files in the state folder.

Each process runs in its own session (process group), so a Ctrl-C in the terminal of
`tidemill up` reaches only `up`, which then stops them in order. A pid file whose
process is gone, or whose pid now belongs to another program, counts as not running.
"""

from __future__ import annotations

import contextlib
import os
import signal
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
