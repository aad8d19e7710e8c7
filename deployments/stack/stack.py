"""The local stack of `tidemill up` / `make run`: Prefect server, worker, replayers.

`up` starts what is not already running (idempotent): the Prefect server, then the
supervisor (deployments/stack/supervisor.py), which starts the worker and restarts the
worker, the server or its PostgreSQL whenever one dies. It waits until the worker has
registered its deployments, prints where to look, and — unless detached — stays in
the foreground until Ctrl-C, then stops everything it manages. `down` stops the
same set from any terminal, the supervisor first. The stack binds to 127.0.0.1 only.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tidemill import layout, private
from tidemill.config.load import TidemillConfig
from tidemill.deployments.replay.files import DATASETS
from tidemill.deployments.replay.sensors import SENSORS
from tidemill.deployments.replay.serve import REPLAYABLE
from tidemill.deployments.stack import processes, redis_server, supervisor
from tidemill.deployments.stack.prefect_server import start_server, stop_server
from tidemill.deployments.stack.supervisor import command, environment, worker_processes
from tidemill.errors import TidemillError

WORKER = supervisor.WORKER
SUPERVISOR = (supervisor.NAME, supervisor.MARKER)


def replayer(dataset: str) -> tuple[str, tuple[str, ...]]:
    """Process name and command-line marker of the replayer of `dataset`."""
    return f"replayer-{dataset}", ("tidemill", "replay", dataset)


def replayed(config: TidemillConfig) -> list[str]:
    """The data sets `up` replays: those with a files pipeline of the same name, and
    the sensor readings when a `sensors` pipeline reads a Redis stream."""
    names = [
        name
        for name in DATASETS
        if name in config.pipelines and config.pipelines[name].source.landing_folder is not None
    ]
    sensors = config.pipelines.get(SENSORS)
    if sensors is not None and sensors.source.stream_name is not None:
        names.append(SENSORS)
    return names


class StackError(TidemillError, RuntimeError):
    """The stack could not start; the message says what to do."""


@dataclass(frozen=True)
class Stack:
    """What `up` started and where to find it."""

    ui_url: str
    server_pid: int
    supervisor_pid: int
    worker_pids: dict[str, int]  # worker process name -> pid
    replayer_pids: dict[str, int]  # data set -> pid
    pipelines: list[str]


def _wait_ready(config: TidemillConfig, supervisor_pid: int, timeout: float) -> dict[str, int]:
    """Every worker's pid, once all are ready."""
    state = config.state_dir
    workers = worker_processes(config)
    deadline = time.monotonic() + timeout
    while True:
        pids = {w.name: processes.running(state, w.name, w.marker) for w in workers}
        if all(pids.values()) and all(w.ready.exists() for w in workers):
            return {name: pid for name, pid in pids.items() if pid is not None}
        if not processes.alive(supervisor_pid):
            logs = ", ".join(str(processes.log_file(state, w.name)) for w in workers)
            raise StackError(f"the worker exited during start-up; see {logs}")
        if time.monotonic() > deadline:
            raise StackError(f"the worker was not ready after {timeout:.0f} s")
        time.sleep(0.2)


def up(
    config: TidemillConfig,
    *,
    port: int,
    speed: float | None,
    workers: int = 1,
    timeout: float = 120,
) -> Stack:
    """Start the server, the supervisor (which starts the worker) and (when `speed` is
    given) one replayer per data set the config has a pipeline for (flights,
    transactions); return once the worker is ready."""
    state = config.state_dir
    private.state_folder(state)
    layout.settle(config, workers)  # LayoutError (a ConfigError) before anything starts
    try:
        server_pid = start_server(state, port)
        if redis_server.needed_by(config):
            redis_server.start(state)
    except RuntimeError as error:
        raise StackError(str(error)) from None
    env = environment(config, port)
    supervisor_pid = processes.running(state, *SUPERVISOR)
    if supervisor_pid is None:
        for worker in worker_processes(config):
            if processes.running(state, worker.name, worker.marker) is None:
                worker.ready.unlink(missing_ok=True)
        argv = [sys.executable, "-m", supervisor.MARKER[0], "--config", str(config.path.resolve())]
        argv += ["--port", str(port)]
        supervisor_pid = processes.spawn(state, SUPERVISOR[0], argv, env, state)
    worker_pids = _wait_ready(config, supervisor_pid, timeout)
    replayer_pids = {}
    if speed is not None:
        for dataset in replayed(config):
            name, marker = replayer(dataset)
            pid = processes.running(state, name, marker)
            if pid is None:
                argv = command(config, "replay", dataset, "--speed", f"{speed:g}")
                pid = processes.spawn(state, name, argv, env, state)
            replayer_pids[dataset] = pid
    return Stack(
        ui_url=f"http://127.0.0.1:{port}",
        server_pid=server_pid,
        supervisor_pid=supervisor_pid,
        worker_pids=worker_pids,
        replayer_pids=replayer_pids,
        pipelines=sorted(config.pipelines),
    )


def down(config: TidemillConfig) -> list[str]:
    """Stop the supervisor (so it restarts nothing), the replayers, the worker (it
    finishes its batch) and the server; returns what was running."""
    stopped = []
    workers = worker_processes(config)
    for name, marker in [
        SUPERVISOR,
        *(replayer(dataset) for dataset in REPLAYABLE),
        *((w.name, w.marker) for w in workers),
    ]:
        if processes.stop(config.state_dir, name, marker, timeout=40):
            stopped.append(name)
    if redis_server.stop(config.state_dir):
        stopped.append(redis_server.NAME)
    if stop_server(config.state_dir):
        stopped.append("prefect-server")
    for worker in workers:
        worker.ready.unlink(missing_ok=True)
    return stopped


def watch(config: TidemillConfig, stack: Stack) -> str | None:
    """Block while the supervisor keeps the stack running (it restarts a worker or
    server that dies); returns why it stopped (None: it did not)."""
    while True:
        time.sleep(1.0)
        if not processes.alive(stack.supervisor_pid):
            log = processes.log_file(config.state_dir, SUPERVISOR[0])
            return f"the supervisor stopped; see {log}"


def logs_dir(state_dir: Path) -> Path:
    """Where every stack process logs."""
    return state_dir / "logs"
