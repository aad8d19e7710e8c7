"""Data-parallel learning on Dask: throughput and prequential accuracy of 1, 2 and 4 workers.

Every configuration runs the same model step on the same stream, batch after batch:
tasks/learn/shards.py `sharded_step` folds the batch into the encoder once, cuts it into
contiguous shards, and each shard is encoded, scored by the model as it was before the
batch (prequential), and learned from that same start; the shard models are merged into
one version. With 2 and 4 workers the shards run on a `distributed.LocalCluster`
(`processes=True, threads_per_worker=1`, the cluster prefect-dask starts), one shard a
worker. With 1 worker the step is tasks/learn/prequential.py `prequential_step` in this process (what
the pipeline runs today), with BLAS limited to one thread like each Dask worker (the default
two OpenBLAS threads made the MLP 5-8x slower on these loaded shared cores: measured and
printed below the table). Timed: the whole step (encoder update, shipping, encode + score +
partial_fit on the workers, gathering, merging, the lineage digests); rows/s is the median
of `--repeats` runs.

Streams: the flights (tidemill's default data via tidemill/data `load_flights`,
label `late`, 202 encoded columns) and a seeded synthetic stream with more rows and a
non-linear concept. Estimators: the flights pipeline's sgd_classifier, gaussian_nb (cheap,
merged exactly) and mlp_classifier (the heaviest partial_fit in the registry).

A second table compares the executors for one small batch: dask.distributed directly vs
Prefect tasks mapped on prefect-dask's DaskTaskRunner (inside one flow, and one flow run
per batch), with a local Prefect server the workers report to.
Run: `.venv/bin/python benchmarks/distributed.py [--quick] [--repeats N]`.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
# run as a script, this file's folder comes first on sys.path and its name would shadow the
# `distributed` package (dask.distributed) for this process and its Dask workers
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))

from tidemill.data import load_flights
from tidemill.tasks.features.encode import FeatureEncoder
from tidemill.tasks.learn.estimators import make_estimator
from tidemill.tasks.learn.prequential import prequential_step
from tidemill.tasks.learn.shards import (
    HEAVY_ESTIMATORS,
    MIN_SHARD_ROWS,
    ShardMap,
    dask_map,
    score_and_learn,
    sharded_step,
    should_distribute,
    split_frame,
)
from tidemill.tasks.learn.state import ModelState, Scores
from tidemill.tasks.synthetic.flights import flight_events

RESULTS = REPO / "benchmarks" / "results" / "distributed.txt"
WORKERS = (1, 2, 4)
BATCHES = (500, 5_000, 50_000)
# rows each batch size runs on (a prefix of the stream): enough batches for a stable median
# and a prequential accuracy, within the ~10 minute budget on 2 shared cores
ROWS = {500: 10_000, 5_000: 30_000, 50_000: 200_000}
QUICK_ROWS = {500: 5_000, 5_000: 15_000, 50_000: 100_000}
ESTIMATORS = {
    "sgd_classifier": {
        "loss": "log_loss",
        "alpha": 0.0001,
        "learning_rate": "constant",
        "eta0": 0.01,
    },  # as in tidemill.toml's flights pipeline
    "gaussian_nb": {},
    "mlp_classifier": {},
}
SYNTHETIC_ROWS = 400_000


@dataclass(frozen=True)
class Stream:
    """Model-ready rows in event order and how the encoder reads them."""

    name: str
    frame: pl.DataFrame  # feature columns + target ("0"/"1", null = unlabelled)
    target: str
    numeric: list[str]
    categorical: list[str]
    cyclic: dict[str, int]


def flights() -> Stream:
    """All 336,776 flights with the features the flights pipeline's model sees."""
    events = flight_events(load_flights())
    ts = pl.col("ts")
    frame = events.select(
        "carrier",
        "origin",
        "dest",
        pl.col("distance").cast(pl.Float64),
        ts.dt.hour().alias("event_hour"),
        ts.dt.weekday().alias("event_weekday"),
        ts.dt.month().alias("event_month"),
        pl.col("late").cast(pl.Utf8),
    )
    return Stream(
        "flights",
        frame,
        "late",
        numeric=["distance"],
        categorical=["carrier", "origin", "dest"],
        cyclic={"event_hour": 24, "event_weekday": 7, "event_month": 12},
    )


def synthetic(rows: int = SYNTHETIC_ROWS, seed: int = 11) -> Stream:
    """A seeded stream: 20 numeric columns (different scales) and one 12-level category; the
    label is a noisy non-linear function of five of them (10 % of labels flipped)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 20)) * rng.uniform(0.5, 20.0, 20) + rng.uniform(-5, 5, 20)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    group = rng.integers(0, 12, rows)
    signal = (
        z[:, 0] * z[:, 1]
        + np.sin(2.0 * z[:, 2])
        + 0.8 * z[:, 3]
        - 0.5 * np.abs(z[:, 4])
        + np.linspace(-1.0, 1.0, 12)[group]
    )
    label = (signal > 0) ^ (rng.uniform(size=rows) < 0.1)
    names = [f"x{i:02d}" for i in range(20)]
    frame = pl.DataFrame({n: x[:, i] for i, n in enumerate(names)}).with_columns(
        pl.Series("group", np.array([f"g{g}" for g in range(12)])[group]),
        pl.Series("label", np.where(label, "1", "0")),
    )
    return Stream("synthetic", frame, "label", numeric=names, categorical=["group"], cyclic={})


def fresh(stream: Stream, estimator: str) -> ModelState:
    """An untrained model for `stream`, built as flows/engine/runtime.py `fresh_model` builds one
    (no drift detector: it runs on the coordinator either way)."""
    return ModelState(
        estimator=make_estimator(estimator, dict(ESTIMATORS[estimator]), "classification"),
        encoder=FeatureEncoder(
            numeric=stream.numeric,
            categorical=stream.categorical,
            max_categories=64,
            cyclic=stream.cyclic,
        ),
        task="classification",
        classes=["0", "1"],
    )


@dataclass(frozen=True)
class Run:
    """One pass of one model over a stream prefix."""

    seconds: float  # summed step time (wall clock)
    cpu_path: float  # summed CPU of this process + the busiest worker's CPU, per batch
    rows: int
    correct: int  # labelled rows scored right (batches after the first)
    scored: int

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / self.scored if self.scored else math.nan


Outcome = tuple[Scores | None, ModelState, float]  # scores, learned, busiest worker's CPU s
Step = Callable[[ModelState, pl.DataFrame, str], Outcome]


def in_process(state: ModelState, rows: pl.DataFrame, target: str) -> Outcome:
    """Today's step: tasks/learn/prequential.py prequential_step in this process."""
    step = prequential_step(state, rows, target)
    return step.scores, step.learned, 0.0


def on_shards(run: ShardMap, shards: int) -> Step:
    """The sharded step on `shards` workers through `run`."""

    def step(state: ModelState, rows: pl.DataFrame, target: str) -> Outcome:
        done = sharded_step(state, rows, target, shards, run)
        return done.scores, done.learned, max(s.cpu_seconds for s in done.shards)

    return step


def prequential(stream: Stream, estimator: str, batch: int, rows: int, step: Step) -> Run:
    """Score each batch with the (merged) model of the batches before it, then learn it."""
    state = fresh(stream, estimator)
    frame = stream.frame.head(rows)
    labels = frame[stream.target].to_numpy()
    seconds, cpu_path, correct, scored = 0.0, 0.0, 0, 0
    for start in range(0, frame.height, batch):
        rows_ = frame.slice(start, batch)
        began, cpu = time.perf_counter(), time.process_time()
        scores, state, worker_cpu = step(state, rows_, stream.target)
        seconds += time.perf_counter() - began
        cpu_path += time.process_time() - cpu + worker_cpu
        if scores is not None:
            truth = labels[start : start + rows_.height]
            known = truth != None  # noqa: E711 (an object array: None is unlabelled)
            correct += int((scores.predictions[known] == truth[known]).sum())
            scored += int(known.sum())
    return Run(seconds, cpu_path, frame.height, correct, scored)


@contextmanager
def cluster(workers: int) -> Iterator[Any]:
    """A Dask client on a fresh local cluster of `workers` single-threaded processes."""
    import dask
    from distributed import Client, LocalCluster

    with (
        # shards of the synthetic stream are 10-20 MiB: expected, not a mistake
        dask.config.set({"distributed.admin.large-graph-warning-threshold": "1GiB"}),
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as local,
        Client(local) as client,
    ):
        yield client


@dataclass(frozen=True)
class Row:
    stream: str
    estimator: str
    batch: int
    workers: int
    rows: int
    rate: float  # median rows/s
    spread: tuple[float, float]  # min, max rows/s over the repeats
    cpu_path: float  # median CPU critical path of a run, seconds
    accuracy: float
    scored: int


def measure(
    streams: list[Stream], rows_for: dict[int, int], repeats: int, log: Callable[[str], None]
) -> list[Row]:
    """Every stream x estimator x batch size x worker count, `repeats` times each."""
    results: list[Row] = []
    runs: dict[tuple[str, str, int, int], list[Run]] = {}
    for workers in WORKERS:
        with _executor(workers) as step:
            for _ in range(repeats):
                for stream in streams:
                    for estimator in ESTIMATORS:
                        for batch in BATCHES:
                            rows = min(rows_for[batch], stream.frame.height)
                            one = prequential(stream, estimator, batch, rows, step)
                            runs.setdefault((stream.name, estimator, batch, workers), []).append(
                                one
                            )
        log(f"  {workers} worker(s) measured")
    for (stream_name, estimator, batch, workers), done in runs.items():
        rates = [r.rows / r.seconds for r in done]
        results.append(
            Row(
                stream_name,
                estimator,
                batch,
                workers,
                done[0].rows,
                statistics.median(rates),
                (min(rates), max(rates)),
                statistics.median(r.cpu_path for r in done),
                done[0].accuracy,
                done[0].scored,
            )
        )
    return results


@contextmanager
def _executor(workers: int) -> Iterator[Step]:
    if workers == 1:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):  # as in each Dask worker (OPENBLAS_NUM_THREADS=1)
            yield in_process
        return
    with cluster(workers) as client:
        yield on_shards(dask_map(client), workers)


def table(rows: list[Row]) -> list[str]:
    """The results as a Markdown table, ratios and accuracy deltas against 1 worker."""
    base = {(r.stream, r.estimator, r.batch): r for r in rows if r.workers == 1}
    lines = [
        "| stream | estimator | batch rows | workers | rows | rows/s (median) | min–max"
        " | wall vs 1 | CPU path vs 1 | prequential acc % | Δ acc (points) | should_distribute |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    order = sorted(
        rows, key=lambda r: (r.stream, list(ESTIMATORS).index(r.estimator), r.batch, r.workers)
    )
    for r in order:
        one = base[(r.stream, r.estimator, r.batch)]
        ratio = r.rate / one.rate
        rule = should_distribute(r.estimator, r.batch, r.workers)
        lines.append(
            f"| {r.stream} | {r.estimator} | {r.batch:,} | {r.workers} | {r.rows:,} | {r.rate:,.0f} "
            f"| {r.spread[0]:,.0f}–{r.spread[1]:,.0f} | {ratio:.2f}× | {one.cpu_path / r.cpu_path:.2f}× "
            f"| {r.accuracy:.2f} | {r.accuracy - one.accuracy:+.2f} | {'yes' if rule else 'no'} |"
        )
    return lines


# ---------------------------------------------------------------- executors compared


def executor_overhead(stream: Stream, log: Callable[[str], None], runs: int) -> list[str]:
    """Milliseconds per 1,000-row sgd_classifier batch in 2 shards: in-process, on Dask
    directly, as Prefect tasks on DaskTaskRunner in one flow, and as one flow run a batch."""
    home = Path(tempfile.mkdtemp(prefix="tidemill-bench-prefect-"))
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    from prefect import flow, task
    from prefect.server.api.server import SubprocessASGIServer
    from prefect_dask import DaskTaskRunner

    began = time.perf_counter()
    server = SubprocessASGIServer()
    server.start()
    # the spawned Dask workers inherit it: their task runs report to this server, not to a
    # temporary server each (what happens without PREFECT_API_URL)
    os.environ["PREFECT_API_URL"] = server.api_url
    log(f"  Prefect server up in {time.perf_counter() - began:.1f} s")
    state = fresh(stream, "sgd_classifier")
    frame = stream.frame.head(2_000)
    state = sharded_step(state, frame.head(1_000), stream.target, 1).learned
    batch = frame.slice(1_000, 1_000)
    start = sharded_step(state, batch, stream.target, 1).learned  # encoder already folded in
    shard_task = task(score_and_learn, name="score_and_learn")
    results: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[[], object], n: int) -> None:
        fn()  # warm-up (imports on the workers, first flow run)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        results[name] = times

    try:
        with cluster(2) as client:
            run = dask_map(client)
            timed(
                "in-process, 1 shard (no Dask)",
                lambda: sharded_step(state, batch, stream.target, 1),
                20,
            )
            timed(
                "dask.distributed directly, 2 shards",
                lambda: sharded_step(state, batch, stream.target, 2, run),
                20,
            )
            runner = DaskTaskRunner(address=client.scheduler.address)

            @flow(task_runner=runner, persist_result=False)
            def one_batch(parts: list[pl.DataFrame]) -> list[Any]:
                return [f.result() for f in shard_task.map(start, parts, stream.target)]

            @flow(task_runner=runner, persist_result=False)
            def many_batches(parts: list[pl.DataFrame], n: int) -> list[float]:
                times = []
                for _ in range(n + 1):
                    t = time.perf_counter()
                    [f.result() for f in shard_task.map(start, parts, stream.target)]
                    times.append(time.perf_counter() - t)
                return times[1:]

            parts = split_frame(batch, 2)
            results["Prefect tasks on DaskTaskRunner, inside one flow run"] = many_batches(
                parts, runs
            )
            timed("Prefect flow run per batch, DaskTaskRunner", lambda: one_batch(parts), runs)
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    lines = [
        "| executor (1,000-row batch, sgd_classifier) | ms per batch (median) | min–max | runs |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, times in results.items():
        ms = [t * 1e3 for t in times]
        lines.append(
            f"| {name} | {statistics.median(ms):,.1f} | {min(ms):,.1f}–{max(ms):,.1f} | {len(ms)} |"
        )
    return lines


def blas_note(stream: Stream) -> str:
    """In-process mlp_classifier rows/s with the default BLAS threads and with one."""
    from threadpoolctl import threadpool_limits

    default = prequential(stream, "mlp_classifier", 5_000, 20_000, in_process)
    with threadpool_limits(limits=1):
        single = prequential(stream, "mlp_classifier", 5_000, 20_000, in_process)
    return (
        f"BLAS threads: in-process mlp_classifier on {stream.name}, 5,000-row batches, 20,000 rows:"
        f" {default.rows / default.seconds:,.0f} rows/s with the default threads ({_blas_threads()}),"
        f" {single.rows / single.seconds:,.0f} rows/s with 1 — hence 1 in every run above."
    )


def _blas_threads() -> str:
    try:
        from threadpoolctl import threadpool_info

        return ", ".join(f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info())
    except Exception:  # threadpoolctl is optional
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short prefixes, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration (median)")
    parser.add_argument("--no-prefect", action="store_true", help="skip the executor comparison")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    rows_for = QUICK_ROWS if args.quick else ROWS
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f} s] {message}", file=sys.stderr, flush=True)

    streams = [flights(), synthetic()]
    log("streams loaded: " + ", ".join(f"{s.name} {s.frame.height:,} rows" for s in streams))
    load_before = os.getloadavg()
    rows = measure(streams, rows_for, repeats, log)
    blas = blas_note(streams[0])
    overhead = (
        [] if args.no_prefect else executor_overhead(streams[0], log, 5 if not args.quick else 3)
    )
    minutes = (time.perf_counter() - began) / 60
    cores = os.cpu_count()
    out = [
        "# Data-parallel learning on Dask: 1 vs 2 vs 4 workers",
        "",
        f"command: `python benchmarks/distributed.py{' --quick' if args.quick else ''}"
        f"{f' --repeats {args.repeats}' if args.repeats != 3 else ''}`  ",
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, {cores} cores "
        f"shared with other work (load average {load_before[0]:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after); python {platform.python_version()};"
        f" wall time {minutes:.1f} min  ",
        f"rows/s: median of {repeats} run(s) of the whole step (encoder update, ship, encode + score +"
        " partial_fit per shard, gather, merge, lineage digests); 1 worker = prequential_step in"
        " this process, no Dask, BLAS limited to 1 thread like each Dask worker.  ",
        "CPU path vs 1: CPU seconds of one process for the step, divided by the sharded step's"
        " CPU in this process (client, scheduler, merge) plus its busiest worker's CPU on its shard:"
        " the speed-up if every worker had a core of its own and the wire cost nothing; wall vs 1 is"
        " what these shared cores gave.  ",
        "prequential acc: labelled rows of every batch after the first, scored by the model before"
        " the batch (identical in every repeat: the merge is deterministic).  ",
        f"**{cores} cores: 4 workers can only oversubscribe them** (4 processes time-share 2 cores,"
        " and the coordinator waits for the slowest shard).",
        "",
        *table(rows),
        "",
        "should_distribute (tasks/learn/shards.py): estimator in HEAVY_ESTIMATORS"
        f" ({', '.join(sorted(HEAVY_ESTIMATORS))}), workers >= 2 and batch_rows // workers >="
        f" MIN_SHARD_ROWS ({MIN_SHARD_ROWS:,}).",
        "",
        blas,
    ]
    if overhead:
        out += [
            "",
            "## Executors compared (2 workers, one LocalCluster, local Prefect server)",
            "",
            *overhead,
        ]
    text = "\n".join(out) + "\n"
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    log(
        f"written to {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
