"""Cycle cost against history: does a micro-batch cost the same with 50 M rows stored?

For each history size (default 0, 5 M and 50 M rows) a fresh warehouse is pre-loaded
with generated history — raw.P, clean.P, predictions, the hourly aggregate windows and
one `_batches` row per 500 rows, as if that many rows had gone through the pipeline —
and checkpointed. Then 100 cycles each land a CSV of 500 new rows (new keys, later event
times, a few repeating stored keys so the duplicate check has to look) and run
`run_cycle` on a resident Runtime, as the worker does. Prints p50/p95 cycle time per
size, the ratio to the empty warehouse, and the median of each step, so a step whose
cost grows with history shows itself. The snapshot publication is measured apart (its
cost is the file's size: see `--snapshot`).

Run: `python benchmarks/history.py [--sizes 0,5000000,50000000] [--cycles 100]`
(50 M rows need about 6 GB of disk and a few minutes to generate).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tidemill.config.load import load_config
from tidemill.flows.engine.cycle import run_cycle
from tidemill.flows.engine.runtime import Runtime
from tidemill.private import restrict_umask
from tidemill.warehouse.connection import database_path
from tidemill.warehouse.serving.snapshot import publish_snapshot, snapshot_path

BATCH_ROWS = 500
SENSORS = 200
CONFIG = """
[state]
dir = "state"

[pipelines.meter]
source = {{ kind = "files", path = "{landing}/*.csv", format = "csv", settle_seconds = 0 }}
event_time = "ts"
key = "id"
target = "alarm"
features = ["sensor", "temp", "load"]
categorical = ["sensor"]
classes = [0, 1]
batch_rows = {batch_rows}
every_seconds = 5

[[pipelines.meter.aggregates]]
name = "per_sensor"
by = ["sensor"]
every = "1h"
"""
START = "2020-01-01 00:00:00"


def _history(runtime: Runtime, rows: int) -> None:
    """`rows` rows of history, as `rows / BATCH_ROWS` committed batches would leave them:
    one event every second from START, keys 0..rows-1."""
    con = runtime.con
    if rows == 0:
        return
    batches = max(1, rows // BATCH_ROWS)
    con.execute("BEGIN")
    con.execute(
        f"""INSERT INTO raw.meter
        SELECT i::VARCHAR, TIMESTAMP '{START}' + to_seconds(i), 's' || (i % {SENSORS}),
               20 + (hash(i) % 1000) / 100.0, (hash(i * 7) % 1000) / 1000.0,
               (hash(i * 13) % 10 = 0)::INT::VARCHAR,
               i // {BATCH_ROWS} + 1, now()::TIMESTAMP, 'history.csv', i + 2, md5(i::VARCHAR)
        FROM range({rows}) t(i)"""
    )
    con.execute(
        """INSERT INTO clean.meter
        SELECT batch_id, id, ts, sensor, temp, load, alarm FROM raw.meter"""
    )
    con.execute(
        """INSERT INTO ml.meter_predictions
        SELECT batch_id, id, ts, 1, '0', 0.1 FROM raw.meter"""
    )
    con.execute(
        """INSERT INTO agg.meter_per_sensor
        SELECT date_trunc('hour', ts), sensor, count(*), count(alarm), sum((alarm = '1')::INT), max(batch_id)
        FROM raw.meter GROUP BY ALL"""
    )
    con.execute(
        f"""INSERT INTO _batches (batch_id, pipeline, status, rows_in, rows_accepted,
            rows_quarantined, rows_learned, started_at, finished_at, timings_json)
        SELECT b, 'meter', 'committed', {BATCH_ROWS}, {BATCH_ROWS}, 0, {BATCH_ROWS},
               now()::TIMESTAMP, now()::TIMESTAMP, '{{}}'
        FROM range(1, {batches} + 1) t(b)"""
    )
    con.execute("COMMIT")
    con.execute("CHECKPOINT")


def batch_file(
    path: Path, history: int, cycle: int, rng: np.random.Generator, rows: int = BATCH_ROWS
) -> None:
    """The CSV of cycle `cycle` after `history` rows: new keys and later event times (one
    per second), and a few stored keys delivered again when there is history."""
    first = history + cycle * rows
    ids = np.arange(first, first + rows)
    if history:  # a few deliveries of stored keys: the duplicate check must find them
        ids[:5] = rng.integers(0, history, 5)
    seconds = history + cycle * rows + np.arange(rows)
    start = np.datetime64("2020-01-01T00:00:00")
    pl.DataFrame(
        {
            "id": ids,
            "ts": [str(start + np.timedelta64(int(s), "s")) + "Z" for s in seconds],
            "sensor": [f"s{i % SENSORS}" for i in ids],
            "temp": rng.normal(25, 3, rows).round(2),
            "load": rng.random(rows).round(3),
            "alarm": (rng.random(rows) < 0.1).astype(int),
        }
    ).write_csv(path)


def run(history: int, cycles: int, workdir: Path, snapshot: bool) -> dict[str, object]:
    landing = workdir / "landing"
    landing.mkdir(parents=True)
    (workdir / "tidemill.toml").write_text(
        textwrap.dedent(CONFIG.format(landing=landing, batch_rows=BATCH_ROWS))
    )
    config = load_config(workdir / "tidemill.toml")
    runtime = Runtime.open(config)
    runtime.publication.every_seconds = 1e9  # measured apart
    rng = np.random.default_rng(7)
    batch_file(landing / "warmup.csv", 0, 0, rng)  # creates the tables, names the columns
    loaded = time.perf_counter()
    state = runtime.pipeline("meter")
    assert state is not None
    runtime.con.execute("DELETE FROM raw.meter_inbox")
    _history(runtime, history)
    loaded = time.perf_counter() - loaded
    size = database_path(config.state_dir).stat().st_size
    times: list[float] = []
    steps: dict[str, list[float]] = {}
    for cycle in range(cycles):
        batch_file(landing / f"b{cycle:05d}.csv", history, cycle + 1, rng)
        clock = time.perf_counter()
        report = run_cycle(runtime, "meter", drain=True)
        times.append(time.perf_counter() - clock)
        assert report.status == "committed", report
        for step, ms in report.timings_ms.items():
            steps.setdefault(step, []).append(ms)
    copy = None
    if snapshot:
        runtime.con.execute("CHECKPOINT")
        clock = time.perf_counter()
        publish_snapshot(database_path(config.state_dir), snapshot_path(config.state_dir))
        copy = time.perf_counter() - clock
    runtime.close()
    times_ms = sorted(t * 1000 for t in times[5:])  # the first cycles warm caches
    return {
        "history": history,
        "file_gb": size / 1e9,
        "load_s": loaded,
        "p50": statistics.median(times_ms),
        "p95": times_ms[int(0.95 * (len(times_ms) - 1))],
        "steps": {k: statistics.median(v) for k, v in steps.items()},
        "snapshot_s": copy,
    }


def main() -> None:
    restrict_umask()  # a tidemill process: state folders private, as the CLI makes them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,5000000,50000000")
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--snapshot", action="store_true", help="also time one snapshot copy")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp one)")
    args = parser.parse_args()
    results = []
    for history in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            results.append(run(history, args.cycles, Path(tmp), args.snapshot))
        r = results[-1]
        print(
            f"history {history:,}: p50 {r['p50']:.1f} ms, loaded in {r['load_s']:.0f} s", flush=True
        )
    base = results[0]
    table = Table(title=f"{args.cycles} cycles of {BATCH_ROWS} rows after N rows of history")
    for column in ("history rows", "file GB", "p50 ms", "p95 ms", "p50 / empty", "p95 / empty"):
        table.add_column(column, justify="right")
    if args.snapshot:
        table.add_column("snapshot copy s", justify="right")
    for r in results:
        row = [
            f"{r['history']:,}",
            f"{r['file_gb']:.2f}",
            f"{r['p50']:.1f}",
            f"{r['p95']:.1f}",
            f"{r['p50'] / base['p50']:.2f}",
            f"{r['p95'] / base['p95']:.2f}",
        ]
        if args.snapshot:
            row.append(f"{r['snapshot_s']:.2f}")
        table.add_row(*row)
    console = Console(width=140)
    console.print(table)
    steps = Table(title="median ms per step")
    steps.add_column("history rows", justify="right")
    names = list(base["steps"])  # type: ignore[call-overload]
    for name in names:
        steps.add_column(name, justify="right")
    for r in results:
        steps.add_row(f"{r['history']:,}", *(f"{r['steps'].get(n, 0):.1f}" for n in names))  # type: ignore[union-attr]
    console.print(steps)


if __name__ == "__main__":
    main()
