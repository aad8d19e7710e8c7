"""SQL on the live stack: read latency on each read path, and how fresh a reader's rows are.

Starts the real stack (`tidemill.deployments.stack.stack.up`: Prefect server, the worker;
no replayer) in a temporary state folder with a copy of tidemill.toml (flights every
5 s, encryption on: the defaults) plus `[serving] snapshot_every_seconds` (default 5),
and plays the landing writer itself as benchmarks/freshness.py does: every 2-5 s
(random) the next real flights (~19 rows/s, as `make run` replays them) as one CSV,
atomically. Meanwhile, after 2 warm-up runs and for N scheduled runs:

- **Quack**: an external DuckDB client (a plain `duckdb.connect()`, the quack extension
  loaded) ATTACHes the owner with the URI and token `tidemill serving --json` gives, and
  every 0.2 s runs `FROM live.query(...)` counting each landed file's rows: its latency,
  and (a) file landed -> all its rows visible to that client (goal p95 <= cadence + 0.5 s);
- **tidemill query**: the command, a new process each time, every 2 s (wall time,
  Python start-up included, as a user sees it);
- **snapshot**: open the published copy read-only with the key, count, close, every
  0.2 s: its latency, and (b) file landed -> rows in the snapshot.

Prints one table (p50, p95, max per measure) and the failures seen (flow runs, reads).
Run: `.venv/bin/python benchmarks/serving.py` (100 runs, ~9 min) or `--quick` (20 runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from freshness import (
    CADENCE,
    POLL_SECONDS,
    ROWS_PER_SECOND,
    _config,
    _deployment_id,
    _flow_runs,
    _free_port,
    _landings,
    _warm_up,
)

from tidemill.config.load import TidemillConfig
from tidemill.deployments.stack import stack
from tidemill.private import restrict_umask
from tidemill.warehouse import extensions
from tidemill.warehouse.connection import open_readonly
from tidemill.warehouse.encryption import key_for
from tidemill.warehouse.serving.snapshot import snapshot_path

console = Console(width=200)
QUERY_EVERY = 2.0


@dataclass
class Seen:
    """What the readers saw: latencies per path, when each file became visible, errors."""

    files: dict[str, tuple[float, int]] = field(default_factory=dict)  # path -> (landed, rows)
    visible: dict[str, dict[str, float]] = field(default_factory=dict)  # reader -> path -> at
    latency: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def waiting(self, reader: str) -> dict[str, int]:
        with self.lock:
            done = self.visible.setdefault(reader, {})
            return {p: n for p, (_, n) in self.files.items() if p not in done}

    def saw(self, reader: str, seconds: float, counts: list[tuple[str, int]]) -> None:
        at = time.time()
        with self.lock:
            self.latency.setdefault(reader, []).append(seconds)
            wanted = {p: n for p, (_, n) in self.files.items()}
            for path, count in counts:
                if path in wanted and count >= wanted[path]:
                    self.visible.setdefault(reader, {}).setdefault(path, at)

    def failed(self, reader: str, error: BaseException) -> None:
        with self.lock:
            self.errors.setdefault(reader, []).append(
                f"{type(error).__name__}: {error}".splitlines()[0]
            )


def _counting(paths: dict[str, int]) -> str:
    listed = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
    return (
        "SELECT _file, count(*) FROM (SELECT _file FROM raw.flights UNION ALL "
        f"SELECT _file FROM raw.flights_quarantine) WHERE _file IN ({listed}) GROUP BY 1"
    )


def _poll(seen: Seen, reader: str, read: Callable[[str], list[tuple[str, int]]]) -> None:
    """One poll: count the waiting files' rows through `read`, timing it."""
    waiting = seen.waiting(reader) or {"-": 0}
    started = time.perf_counter()
    try:
        counts = read(_counting(waiting))
    except Exception as error:  # every failure to read is a finding
        seen.failed(reader, error)
        return
    seen.saw(reader, time.perf_counter() - started, counts)


def _quack_reader(config: TidemillConfig, seen: Seen, stop: threading.Event) -> None:
    """An external DuckDB client over Quack, attached as `tidemill serving --json` says."""
    served = subprocess.run(
        [sys.executable, "-m", "tidemill", "--config", str(config.path), "serving", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    owner = json.loads(served.stdout)[0]
    token = Path(owner["token_file"]).read_text().strip()
    con = duckdb.connect(config={"extension_directory": str(extensions.extension_dir())})
    for name in extensions.EXTENSIONS:
        con.execute(f"LOAD {name}")
    con.execute(f"ATTACH '{owner['uri']}' AS live (TOKEN '{token}')")

    def read(sql: str) -> list[tuple[str, int]]:
        quoted = sql.replace("'", "''")
        return [(str(p), int(n)) for p, n in con.sql(f"FROM live.query('{quoted}')").fetchall()]

    while not stop.wait(POLL_SECONDS):
        _poll(seen, "quack", read)
    con.close()


def _snapshot_reader(config: TidemillConfig, seen: Seen, stop: threading.Event) -> None:
    link = snapshot_path(config.state_dir)

    def read(sql: str) -> list[tuple[str, int]]:
        copy = link.resolve(strict=True)
        with open_readonly(copy, key_for(copy, config.state_dir)) as con:
            return [(str(p), int(n)) for p, n in con.sql(sql).fetchall()]

    while not stop.wait(POLL_SECONDS):
        if link.exists():
            _poll(seen, "snapshot", read)


def _query_reader(config: TidemillConfig, seen: Seen, stop: threading.Event) -> None:
    command = [sys.executable, "-m", "tidemill", "--config", str(config.path), "query"]
    while not stop.wait(QUERY_EVERY):
        started = time.perf_counter()
        done = subprocess.run(
            [*command, "SELECT count(*) FROM raw.flights", "--format", "csv"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            seen.failed("tidemill query", RuntimeError(done.stderr.strip()[-200:]))
            continue
        seen.saw("tidemill query", time.perf_counter() - started, [])


@dataclass
class Result:
    seen: Seen
    runs: dict[str, int]
    failed: list[str]
    load: tuple[float, float]


def _measure(workdir: Path, runs_wanted: int, snapshot_every: float, seed: int) -> Result:
    config = _config(workdir, snapshot_every)
    load_before = os.getloadavg()[1]
    port = _free_port()
    seen, stop = Seen(), threading.Event()
    readers = [
        threading.Thread(target=reader, args=(config, seen, stop), daemon=True)
        for reader in (_quack_reader, _snapshot_reader, _query_reader)
    ]
    try:
        console.log(f"starting the stack on port {port}")
        stack.up(config, port=port, speed=None)
        api = f"http://127.0.0.1:{port}/api"
        deployment = _deployment_id(config)
        _warm_up(api, deployment)
        for reader in readers:
            reader.start()
        for path, at, rows in _landings(config, api, deployment, runs_wanted, seed):
            with seen.lock:
                seen.files[path] = (at, rows.height)
        deadline = time.monotonic() + 3 * CADENCE + 2 * snapshot_every
        while time.monotonic() < deadline and any(
            len(seen.visible.get(r, {})) < len(seen.files) for r in ("quack", "snapshot")
        ):
            time.sleep(0.5)
        stop.set()
        for reader in readers:
            reader.join()
        runs = _flow_runs(api, deployment)
    finally:
        stop.set()
        console.log(f"stopped: {', '.join(stack.down(config))}")
    states: dict[str, int] = {}
    for run in runs:
        states[str(run["state_name"])] = states.get(str(run["state_name"]), 0) + 1
    failed = [
        f"{r['name']}: {r['state_name']}" for r in runs if r["state_type"] in {"FAILED", "CRASHED"}
    ]
    return Result(seen, states, failed, (load_before, os.getloadavg()[1]))


def _row(table: Table, what: str, values: list[float], target: float | None, unit: float) -> None:
    if not values:
        table.add_row(what, "0", "", "", "", "", "")
        return
    p95 = float(np.percentile(values, 95))
    table.add_row(
        what,
        str(len(values)),
        f"{statistics.median(values) * unit:.2f}",
        f"{p95 * unit:.2f}",
        f"{max(values) * unit:.2f}",
        f"<= {target:g}" if target is not None else "",
        ("[green]yes" if p95 * unit <= target else "[red]no") if target is not None else "",
    )


def main() -> None:
    restrict_umask()  # a tidemill process: state folders private, as the CLI makes them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="scheduled runs to measure over")
    parser.add_argument("--quick", action="store_true", help="20 runs (about 2 minutes)")
    parser.add_argument(
        "--snapshot-every", type=float, default=5.0, help="[serving] snapshot_every_seconds"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the file intervals")
    args = parser.parse_args()
    runs = 20 if args.quick else args.runs
    signal.signal(signal.SIGTERM, lambda signum, _: (_ for _ in ()).throw(KeyboardInterrupt()))
    workdir = Path(tempfile.mkdtemp(prefix="tidemill-serving-"))
    try:
        result = _measure(workdir, runs, args.snapshot_every, args.seed)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    seen = result.seen
    table = Table(
        title=f"SQL on the live stack: flights every {CADENCE} s, encrypted, a landing file "
        f"every 2-5 s (~{ROWS_PER_SECOND:g} rows/s), {runs} scheduled runs, snapshot every "
        f"{args.snapshot_every:g} s, 2 cores"
    )
    for column in ("measure", "n", "p50", "p95", "max", "goal p95", "met"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for reader in ("quack", "tidemill query", "snapshot"):
        _row(table, f"read latency, {reader} (ms)", seen.latency.get(reader, []), None, 1000)
    table.add_section()
    for reader, goal in (("quack", CADENCE + 0.5), ("snapshot", None)):
        visible = seen.visible.get(reader, {})
        delays = [visible[p] - at for p, (at, _) in seen.files.items() if p in visible]
        _row(table, f"file landed -> rows visible, {reader} (s)", delays, goal, 1)
    console.print(table)
    states = ", ".join(f"{n} {state}" for state, n in sorted(result.runs.items()))
    console.print(
        f"flow runs: {states}; failed+crashed {len(result.failed)}; files {len(seen.files)}, "
        + ", ".join(f"{r} saw {len(seen.visible.get(r, {}))}" for r in ("quack", "snapshot"))
        + f"; 5-min load {result.load[0]:.2f} before, {result.load[1]:.2f} after"
    )
    for reader, errors in seen.errors.items():
        console.print(f"{reader}: {len(errors)} failed reads, e.g. {sorted(set(errors))[:3]}")


if __name__ == "__main__":
    main()
