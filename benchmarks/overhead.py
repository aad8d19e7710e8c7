"""Standing cost of the live stack: CPU and memory per process, idle and busy, side by side.

Commands (the committed benchmarks/results/overhead.txt ran at commit c3bc2f0, from a
clean export of it, because the shared working tree held other sessions' edits):

    git archive c3bc2f0 | tar -x -C /tmp/tidemill-bench-src && cd /tmp/tidemill-bench-src
    PYTHONPATH=$PWD /work/main/.venv/bin/python benchmarks/overhead.py --minutes 30

From a checkout: `.venv/bin/python benchmarks/overhead.py --minutes 30`.
Smoke test: `.venv/bin/python benchmarks/overhead.py --minutes 3`.

Starts two stacks at once (`tidemill.deployments.stack.stack.up`, each in its own temporary state
folder with a copy of tidemill.toml and its own port):

- **idle**: the flights pipeline with no replayer, so every scheduled run is an empty cycle;
- **busy**: the flights replayer at `--speed` (1800x: ~19 rows/s, as `make run`).

Every `--interval` seconds it samples, for each process of each stack (found from the
pid files in `<state>/run/*.pid` plus their psutil descendants, and PostgreSQL from its
`postmaster.pid` when the Prefect server uses it): cumulative CPU seconds (user +
system, plus those of reaped children) and RSS; and counts the completed scheduled runs
of `micro-batch/flights` through the Prefect REST API. Prints one table per stack: CPU
seconds over the measured window (after `--warmup`), per completed scheduled run and as
% of one core, RSS at start / end / max, the RSS slope against completed runs (MiB per
100 runs) and PSS at start / end (shared pages split between the processes sharing them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tidemill.cli.access import read_sql
from tidemill.config.load import TidemillConfig, load_config
from tidemill.deployments.stack import stack
from tidemill.deployments.worker import ready_file
from tidemill.private import restrict_umask
from tidemill.settings import get_settings

MIB = 1024 * 1024
console = Console(width=200)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Sample:
    """One look at a stack: seconds since start, completed runs, per role (CPU s, RSS, PSS,
    processes)."""

    at: float
    runs: int
    roles: dict[str, tuple[float, float, float, int]]


@dataclass
class Monitored:
    """A running stack and what was sampled from it."""

    label: str
    config: TidemillConfig
    port: int
    deployment: str = ""
    samples: list[Sample] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)
    rows: int | None = None


def _roots(state_dir: Path) -> list[tuple[str, int]]:
    """(role, pid) of each stack process, PostgreSQL first so its backends count as its own."""
    roots = []
    postmaster = state_dir / "postgres" / "data" / "postmaster.pid"
    if postmaster.exists():
        roots.append(("postgres", int(postmaster.read_text().split()[0])))
    for pid_file in sorted((state_dir / "run").glob("*.pid")):
        try:
            roots.append((pid_file.stem, int(pid_file.read_text().strip())))
        except (OSError, ValueError):
            continue
    return roots


def _role_usage(state_dir: Path) -> dict[str, tuple[float, float, float, int]]:
    """Role -> (cumulative CPU s, RSS bytes, PSS bytes, processes) over its process tree."""
    claimed: set[int] = set()
    usage = {}
    for role, pid in _roots(state_dir):
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        cpu = rss = pss = 0.0
        count = 0
        for proc in tree:
            if proc.pid in claimed:
                continue
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    cpu += t.user + t.system + t.children_user + t.children_system
                    memory = proc.memory_full_info()
                    rss += memory.rss
                    pss += memory.pss
            except psutil.Error:
                continue
            claimed.add(proc.pid)
            count += 1
        usage[role] = (cpu, rss, pss, count)
    return usage


def _states(api: str, deployment: str) -> dict[str, int]:
    """State name -> count of the deployment's flow runs that are not still scheduled."""
    counts: dict[str, int] = {}
    offset = 0
    with httpx.Client(base_url=api, timeout=30) as client:
        while True:
            page = client.post(
                "/flow_runs/filter",
                json={
                    "deployments": {"id": {"any_": [deployment]}},
                    "flow_runs": {"state": {"type": {"not_any_": ["SCHEDULED"]}}},
                    "limit": 200,
                    "offset": offset,
                },
            )
            page.raise_for_status()
            runs = page.json()
            for run in runs:
                counts[run["state_name"]] = counts.get(run["state_name"], 0) + 1
            offset += len(runs)
            if len(runs) < 200:
                return counts


def _completed(api: str, deployment: str) -> int:
    with httpx.Client(base_url=api, timeout=30) as client:
        reply = client.post(
            "/flow_runs/count",
            json={
                "deployments": {"id": {"any_": [deployment]}},
                "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
            },
        )
        reply.raise_for_status()
        return int(reply.json())


def _deployment_id(config: TidemillConfig) -> str:
    for line in ready_file(config.state_dir).read_text().splitlines():
        run_id, name = line.split(" ", 1)
        if name == "micro-batch":
            return run_id
    raise RuntimeError("the worker registered no micro-batch deployment")


def _sample(stack_: Monitored, started: float) -> None:
    api = f"http://127.0.0.1:{stack_.port}/api"
    stack_.samples.append(
        Sample(
            at=time.monotonic() - started,
            runs=_completed(api, stack_.deployment),
            roles=_role_usage(stack_.config.state_dir),
        )
    )


def _table(stack_: Monitored, speed: float) -> Table:
    first, last = stack_.samples[0], stack_.samples[-1]
    runs = last.runs - first.runs
    seconds = last.at - first.at
    what = "no replayer: empty cycles" if stack_.label == "idle" else f"replayer at {speed:g}x"
    rows = f", {stack_.rows:,} rows stored" if stack_.rows is not None else ""
    states = ", ".join(f"{n} {s}" for s, n in sorted(stack_.states.items()))
    table = Table(
        title=f"{stack_.label} stack ({what}): {seconds / 60:.1f} min measured, {runs} scheduled "
        f"runs completed in the window{rows}; all runs of the stack: {states}",
    )
    for column in (
        "process",
        "procs",
        "CPU s total",
        "CPU s / run",
        "% of a core",
        "RSS start MiB",
        "RSS end MiB",
        "RSS max MiB",
        "RSS slope MiB / 100 runs",
        "PSS start MiB",
        "PSS end MiB",
    ):
        table.add_column(column, justify="left" if column == "process" else "right")
    roles = sorted({r for s in stack_.samples for r in s.roles})
    for role in [*roles, "all"]:
        if role == "all":
            seen = stack_.samples
            usage = [tuple(map(sum, zip(*s.roles.values(), strict=True))) for s in seen]
            procs = ""
        else:
            seen = [s for s in stack_.samples if role in s.roles]
            usage = [s.roles[role] for s in seen]
            procs = str(int(usage[-1][3]))
        cpu = usage[-1][0] - usage[0][0]
        rss = [u[1] / MIB for u in usage]
        slope = ""
        if len(seen) >= 3 and seen[-1].runs > seen[0].runs:
            fit = np.polyfit([s.runs for s in seen], rss, 1)[0]
            slope = f"{fit * 100:+.2f}"
        table.add_row(
            role,
            procs,
            f"{cpu:.1f}",
            f"{cpu / runs:.3f}" if runs else "",
            f"{100 * cpu / seconds:.1f}" if seconds else "",
            f"{rss[0]:.0f}",
            f"{rss[-1]:.0f}",
            f"{max(rss):.0f}",
            slope,
            f"{usage[0][2] / MIB:.0f}",
            f"{usage[-1][2] / MIB:.0f}",
            style="bold" if role == "all" else None,
        )
    return table


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    restrict_umask()  # a tidemill process: state folders private, as the CLI makes them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30, help="measured duration")
    parser.add_argument("--interval", type=float, default=60, help="seconds between samples")
    parser.add_argument("--speed", type=float, default=1800, help="replay speed of the busy stack")
    parser.add_argument(
        "--warmup", type=float, default=60, help="seconds after start-up before the window opens"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary state folders")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    stacks = []
    for label in ("idle", "busy"):
        workdir = Path(tempfile.mkdtemp(prefix=f"tidemill-overhead-{label}-"))
        (workdir / "tidemill.toml").write_text((REPO / "tidemill.toml").read_text())
        stacks.append(Monitored(label, load_config(workdir / "tidemill.toml"), _free_port()))
    try:
        for s in stacks:
            console.log(f"starting the {s.label} stack on port {s.port}")
            stack.up(s.config, port=s.port, speed=None if s.label == "idle" else args.speed)
            s.deployment = _deployment_id(s.config)
        console.log(f"both stacks up; warming up for {args.warmup:g} s")
        time.sleep(args.warmup)
        started = time.monotonic()
        load_before = os.getloadavg()[1]
        end = started + args.minutes * 60
        while True:
            for s in stacks:
                _sample(s, started)
            console.log(
                ", ".join(f"{s.label}: {s.samples[-1].runs} runs completed" for s in stacks)
            )
            if time.monotonic() >= end - 1:
                break
            time.sleep(max(0.0, min(args.interval, end - time.monotonic())))
        load_after = os.getloadavg()[1]
        for s in stacks:
            s.states = _states(f"http://127.0.0.1:{s.port}/api", s.deployment)
            result, _ = read_sql(s.config.state_dir, "SELECT count(*) FROM raw.flights")
            s.rows = int(result.rows[0][0])
    finally:
        for s in stacks:
            console.log(f"{s.label}: stopped {', '.join(stack.down(s.config))}")
            if args.keep:
                console.log(f"state kept in {s.config.state_dir}")
            else:
                shutil.rmtree(s.config.path.parent, ignore_errors=True)
    database = getattr(get_settings(), "prefect_database", "sqlite")
    console.print(
        f"2 cores shared with other work; Prefect database: {database}; samples every "
        f"{args.interval:g} s after {args.warmup:g} s of warm-up; CPU includes reaped children "
        "(PostgreSQL backends); RSS counts shared pages in every process, PSS splits them; "
        f"5-min load average {load_before:.2f} at the start, {load_after:.2f} at the end"
    )
    for s in stacks:
        console.print(_table(s, args.speed))


if __name__ == "__main__":
    main()
