"""Soak: 10,000 batches on one resident Runtime; do memory and cycle time stay flat?

The worker runs for weeks in one process, so anything that grows per batch (a cache, a
list of scores, DuckDB's buffer pool, open artifacts, the WAL) shows here. The pipeline
of `benchmarks/history.py` (500-row batches by default, an hourly aggregate, one model)
runs `--batches` cycles as the worker does: checkpoints every 50 cycles, the snapshot
published in the background, and artifact maintenance every 500 batches (the worker's
`maintenance/P` deployment runs every 10 minutes). Every 500 batches it prints the
process's RSS and the median and p95 cycle time of those 500, then the drift of each
against the first block (goal: within ±10 %).

Run: `python benchmarks/soak.py [--batches 10000] [--rows 500]`.
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
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from history import CONFIG, batch_file

from tidemill.config.load import load_config
from tidemill.flows.engine.cycle import run_cycle
from tidemill.flows.engine.runtime import Runtime
from tidemill.private import restrict_umask
from tidemill.tasks.judge.retention import RetentionPolicy
from tidemill.warehouse.connection import database_path
from tidemill.warehouse.retention import run_maintenance

BLOCK = 500


def rss_mb() -> float:
    """Resident memory of this process now (not its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    restrict_umask()  # a tidemill process: state folders private, as the CLI makes them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=500, help="rows per batch")
    args = parser.parse_args()
    console = Console(width=140)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        landing = work / "landing"
        landing.mkdir()
        (work / "tidemill.toml").write_text(
            textwrap.dedent(CONFIG.format(landing=landing, batch_rows=args.rows))
        )
        config = load_config(work / "tidemill.toml")
        runtime = Runtime.open(config)
        rng = np.random.default_rng(3)
        blocks: list[tuple[int, float, float, float, float]] = []
        times: list[float] = []
        started = time.monotonic()
        for batch in range(args.batches):
            path = landing / f"b{batch:06d}.csv"
            batch_file(path, 0, batch, rng, rows=args.rows)
            clock = time.perf_counter()
            report = run_cycle(runtime, "meter", drain=True)
            times.append((time.perf_counter() - clock) * 1000)
            assert report.status == "committed", report
            path.unlink()  # landing folders are cleared by their producers
            if (batch + 1) % BLOCK == 0:
                run_maintenance(
                    runtime.con,
                    runtime.state_dir,
                    "meter",
                    RetentionPolicy(),
                    requested_by="soak",
                    lock=runtime.lock,
                )
                block = sorted(times)
                blocks.append(
                    (
                        batch + 1,
                        rss_mb(),
                        statistics.median(block),
                        block[int(0.95 * (len(block) - 1))],
                        database_path(config.state_dir).stat().st_size / 1e6,
                    )
                )
                times = []
                n, rss, p50, p95, size = blocks[-1]
                console.print(
                    f"{n:>6} batches  RSS {rss:7.1f} MB  p50 {p50:6.1f} ms  p95 {p95:6.1f} ms"
                    f"  file {size:7.1f} MB  ({time.monotonic() - started:.0f} s)"
                )
        runtime.close()
    first = blocks[0]
    table = Table(title=f"soak: {args.batches:,} batches of {args.rows} rows, every {BLOCK}")
    for column in (
        "batches",
        "RSS MB",
        "RSS / first",
        "p50 ms",
        "p50 / first",
        "p95 ms",
        "file MB",
    ):
        table.add_column(column, justify="right")
    for n, rss, p50, p95, size in blocks:
        table.add_row(
            f"{n:,}",
            f"{rss:.1f}",
            f"{rss / first[1]:.2f}",
            f"{p50:.1f}",
            f"{p50 / first[2]:.2f}",
            f"{p95:.1f}",
            f"{size:.1f}",
        )
    console.print(table)
    last = blocks[-1]
    console.print(
        f"last block against the first: RSS {100 * (last[1] / first[1] - 1):+.1f} %, "
        f"p50 {100 * (last[2] / first[2] - 1):+.1f} % (goal: within ±10 %)"
    )


if __name__ == "__main__":
    main()
