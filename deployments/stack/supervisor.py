"""Keeps the local stack running: starts the worker, and starts again whatever dies.

`tidemill up` starts one supervisor per state folder (`python -m tidemill.deployments.stack.supervisor`,
in its own session, logging to logs/supervisor.log). It starts the worker, then looks
every half second at PostgreSQL (when the Prefect server uses it), the Redis broker
(when a pipeline reads a stream of it), the Prefect server and the worker, and starts
again any that is gone — a SIGKILL, the OOM killer, a crash
on a full disk. A process that died waits a backoff before its restart: 0.5 s, doubling
up to 30 s while it keeps dying, back to 0.5 s once it has stayed up for 30 s.

A worker whose first start fails (a config error, a warehouse held by another process)
is not started again: the supervisor exits, and `up` reports it. Once a worker was
ready, every later one is restarted, also one that dies while it starts.
What it did is in run/supervisor.json (restarts per process, the last events), written
after every change, for `tidemill status`-like tools and the chaos test.
`tidemill down` stops the supervisor first, so nothing is restarted behind its back.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from tidemill import layout, private
from tidemill.config.load import TidemillConfig, load_config
from tidemill.deployments.stack import postgres, processes, redis_server
from tidemill.deployments.stack.prefect_server import MARKER as SERVER_MARKER
from tidemill.deployments.stack.prefect_server import NAME as SERVER_NAME
from tidemill.deployments.stack.prefect_server import server_env, start_server
from tidemill.settings import get_settings

log = logging.getLogger("tidemill.supervisor")

NAME = "supervisor"
MARKER = ("tidemill.deployments.stack.supervisor",)
WORKER = ("worker", ("tidemill", "worker"))


@dataclass(frozen=True)
class WorkerProcess:
    """One worker of the stack: its process name and command-line markers, the arguments
    of `tidemill` that start it, and the file it touches once ready."""

    name: str
    marker: tuple[str, ...]
    args: tuple[str, ...]
    ready: Path


def worker_processes(config: TidemillConfig) -> list[WorkerProcess]:
    """The stack's workers: one owning the state folder, or one per worker of its layout
    (tidemill/layout.py)."""
    state = config.state_dir
    workers = layout.read(state)
    if not workers:
        return [WorkerProcess(WORKER[0], WORKER[1], ("worker",), ready_file(state))]
    return [
        WorkerProcess(
            f"worker-{w}",
            ("tidemill", "worker", "--as", w),
            ("worker", "--as", w),
            ready_file(layout.worker_dir(state, w)),
        )
        for w in workers
    ]


FIRST_DELAY = 0.5
LONGEST_DELAY = 30.0
STABLE_SECONDS = 30.0
EVENTS_KEPT = 50


def ready_file(state_dir: Path) -> Path:
    """Touched by the worker once it serves queries and its deployments exist."""
    return state_dir / "run" / "worker.ready"


def status_file(state_dir: Path) -> Path:
    """Where the supervisor records its restarts (JSON)."""
    return state_dir / "run" / "supervisor.json"


def read_status(state_dir: Path) -> dict[str, Any]:
    """The supervisor's record: {"pid", "restarts": {process: n}, "events": [...]}; empty
    when there is none (yet)."""
    try:
        status: dict[str, Any] = json.loads(status_file(state_dir).read_text())
    except (OSError, ValueError):
        return {}
    return status


def next_delay(previous: float, uptime: float) -> float:
    """Seconds to wait before restarting a process that died after `uptime` seconds, when
    the wait before its last start was `previous` (0: it never waited)."""
    if uptime >= STABLE_SECONDS or previous <= 0:
        return FIRST_DELAY
    return min(LONGEST_DELAY, previous * 2)


def command(config: TidemillConfig, *args: str) -> list[str]:
    """`python -m tidemill --config CONFIG ARGS...` for a stack process."""
    return [sys.executable, "-m", "tidemill", "--config", str(config.path.resolve()), *args]


def environment(config: TidemillConfig, port: int) -> dict[str, str]:
    """The environment of the stack's Python processes (Prefect client settings)."""
    return {**os.environ, **server_env(config.state_dir, port), "PYTHONUNBUFFERED": "1"}


@dataclass
class _Watched:
    """One supervised process: how to tell it runs, how to start it, its backoff."""

    name: str
    is_running: Callable[[], bool]
    start: Callable[[], None]
    started_at: float = field(default_factory=time.monotonic)
    delay: float = 0.0
    down_since: float | None = None  # when it was first seen gone


class GaveUp(RuntimeError):
    """The first worker exited before it was ready; restarting it would not help."""


class Supervisor:
    """Starts the worker and restarts the stack's processes of `config` (see module doc)."""

    def __init__(self, config: TidemillConfig, port: int, *, interval: float = 0.5) -> None:
        self.config = config
        self.state_dir = config.state_dir
        self.port = port
        self.interval = interval
        self.env = environment(config, port)
        self.workers = {w.name: w for w in worker_processes(config)}
        self.ready_once = {w.name for w in self.workers.values() if w.ready.exists()}
        self.status: dict[str, Any] = {
            "pid": os.getpid(),
            "started_at": _stamp(),
            "restarts": {},
            "events": [],
        }
        # in the order they depend on each other: a tick restarts the database first
        self.watched = [
            _Watched(SERVER_NAME, self._server_runs, self._start_server),
            *(
                _Watched(w.name, partial(self._worker_runs, w), partial(self._start_worker, w))
                for w in self.workers.values()
            ),
        ]
        if get_settings().prefect_database == "postgres":
            self.watched.insert(0, _Watched("postgres", self._database_runs, self._start_database))
        if redis_server.needed_by(config):  # before the worker, whose streams it serves
            self.watched.insert(
                0, _Watched(redis_server.NAME, self._broker_runs, self._start_broker)
            )

    def _database_runs(self) -> bool:
        return postgres.running_pid(self.state_dir) is not None

    def _start_database(self) -> None:
        postgres.start(self.state_dir)

    def _broker_runs(self) -> bool:
        return redis_server.running_pid(self.state_dir) is not None

    def _start_broker(self) -> None:
        redis_server.start(self.state_dir)

    def _server_runs(self) -> bool:
        return processes.running(self.state_dir, SERVER_NAME, SERVER_MARKER) is not None

    def _start_server(self) -> None:
        start_server(self.state_dir, self.port)

    def _worker_runs(self, worker: WorkerProcess) -> bool:
        return processes.running(self.state_dir, worker.name, worker.marker) is not None

    def _start_worker(self, worker: WorkerProcess) -> None:
        worker.ready.unlink(missing_ok=True)
        argv = command(self.config, *worker.args)
        pid = processes.spawn(self.state_dir, worker.name, argv, self.env, self.state_dir)
        log.info("%s started (pid %d)", worker.name, pid)

    def run(self) -> None:
        """Supervise until the process is signalled; raises GaveUp (see the class doc)."""
        self._write_status()
        for worker in self.workers.values():
            if not self._worker_runs(worker):
                self._start_worker(worker)
        while True:
            try:
                self.check()
            except GaveUp:
                raise
            except Exception:  # a full disk, a start that timed out: try again next tick
                log.exception("supervising failed; trying again")
            time.sleep(self.interval)

    def check(self) -> None:
        """Restart each watched process that is gone and whose backoff has passed."""
        self.ready_once |= {w.name for w in self.workers.values() if w.ready.exists()}
        now = time.monotonic()
        for proc in self.watched:
            if proc.is_running():
                proc.down_since = None
                continue
            if proc.name in self.workers and proc.name not in self.ready_once:
                self._event(proc.name, "exited before it was ready: not restarted")
                raise GaveUp(
                    f"the worker exited during start-up; see "
                    f"{processes.log_file(self.state_dir, proc.name)}"
                )
            if proc.down_since is None:
                proc.down_since = now
                proc.delay = next_delay(proc.delay, now - proc.started_at)
                self._event(proc.name, f"is gone; restarting in {proc.delay:g} s")
            if now - proc.down_since < proc.delay:
                continue
            proc.started_at = time.monotonic()
            try:
                proc.start()
            except Exception as error:
                # counted as a failed start: the next attempt waits twice as long
                proc.down_since = None
                self._event(proc.name, f"restart failed: {error}")
                continue
            proc.down_since = None
            restarts = self.status["restarts"]
            restarts[proc.name] = restarts.get(proc.name, 0) + 1
            self._event(proc.name, "restarted")

    def _event(self, process: str, what: str) -> None:
        log.warning("%s %s", process, what)
        events = self.status["events"]
        events.append({"at": _stamp(), "process": process, "event": what})
        del events[:-EVENTS_KEPT]
        self._write_status()

    def _write_status(self) -> None:
        path = status_file(self.state_dir)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_suffix(".json.part")
            part.write_text(json.dumps(self.status, indent=1) + "\n")
            part.replace(path)
        except OSError as error:  # e.g. the disk is full: the next event writes it again
            log.warning("could not write %s: %s", path, error)


def _stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m tidemill.deployments.stack.supervisor --config PATH --port N`."""
    private.restrict_umask()
    parser = argparse.ArgumentParser(prog="python -m tidemill.deployments.stack.supervisor")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def on_signal(signum: int, _frame: object) -> None:
        # at once, even in the middle of a restart that waits for the server: what it
        # started has its pid file, and `down` stops it next
        log.info("%s: stopping (the processes keep running)", signal.Signals(signum).name)
        raise SystemExit(0)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    supervisor = Supervisor(load_config(args.config), args.port)
    try:
        supervisor.run()
    except GaveUp as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
