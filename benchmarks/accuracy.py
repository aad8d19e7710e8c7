"""Prequential accuracy and rows/s: tidemill's online learning against River's learn_one models.

Every row is scored before it is learned, on three streams (benchmarks/streams.py): real
flights (tidemill's default data, label `late`), River's bundled Phishing set, and a seeded
synthetic stream with an abrupt and a gradual concept change.

- **tidemill pipeline**: `run_cycle` until the inbox is empty, on landing CSV files, as
  `tidemill run --drain` runs it: ledgered ingest, validation, clean, score, partial_fit, an
  fsync'd artifact and one DuckDB transaction per micro-batch of 1, 10, 50 or 500 rows. A
  batch costs about 85 ms whatever its size, so batches of 1 and 10 run on a prefix only.
- **tidemill model core**: the same model step (tasks/learn/prequential.py `prequential_step`: encoder
  update, score, metrics, drift detector, partial_fit) on in-memory Polars frames, without
  the warehouse: the like-for-like comparison with River, which stores nothing either.
- **River**: `predict_one` then `learn_one` per row: LogisticRegression behind a
  StandardScaler and a OneHotEncoder (time parts on a circle, as tidemill encodes them),
  HoeffdingTreeClassifier and ARFClassifier on the raw values (ARF is slow: `--arf-rows`
  caps it; by default it sees every row).
- **baseline**: the label seen most often so far, to show what the features add.

Accuracy counts the labelled rows a model scored; rows scored before anything was learned
(the first batch) do not count, as in River's progressive_val_score. The goal table compares
models on the rows that all of them scored. Rows/s counts every row of the stream.
Run: `make bench-accuracy` or `python benchmarks/accuracy.py [--quick] [--rows N]`.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from streams import Stream, drift_stream, flights_stream, phishing_stream

from tidemill.config.load import TidemillConfig, parse_config
from tidemill.config.pipeline import PipelineConfig
from tidemill.flows.engine.cycle import run_cycle
from tidemill.flows.engine.runtime import Runtime
from tidemill.private import restrict_umask
from tidemill.tasks.features.clean import clean_rows
from tidemill.tasks.learn.fresh import fresh_model
from tidemill.tasks.learn.prequential import prequential_step

BATCHES = (1, 10, 50, 500)
GOAL_BATCHES = (50, 500)  # the goals are stated for batches of 50 rows and more
RIVER_MODELS = ("logistic regression", "Hoeffding tree", "adaptive random forest")
EXTRA_ESTIMATORS = ("mlp_classifier", "gaussian_nb")
CHALLENGER = "mlp_classifier"  # as in tidemill.toml's flights pipeline


@dataclass(frozen=True)
class Model:
    """A tidemill estimator choice: registry name (or dotted path) and its params."""

    estimator: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    """How many rows each kind of run gets (the slow ones run on a prefix)."""

    rows: int  # flights and drift (Phishing has 1,250)
    pipeline: dict[int, int]  # batch rows -> most rows through the full pipeline
    core_batch_1: int
    arf: int


# ARF learns about 600 rows/s here, so it sees the whole 30,000-row default streams in under a
# minute each; --arf-rows caps it for longer runs. Batches of 1 cost ~60 ms in the pipeline and
# ~3 ms in the core (a deepcopy of the model per batch), hence their prefixes.
DEFAULT = Limits(rows=30_000, pipeline={1: 500, 10: 4_000}, core_batch_1=5_000, arf=30_000)
QUICK = Limits(rows=3_000, pipeline={1: 100, 10: 1_000}, core_batch_1=3_000, arf=1_500)


@dataclass
class Run:
    """One model on one stream: per-row outcome and the time it took."""

    stream: str
    side: str  # tidemill pipeline | tidemill core | River | baseline
    model: str
    batch: int
    seconds: float
    correct: np.ndarray  # per row: 1.0 right, 0.0 wrong, NaN unscored or unlabelled

    @property
    def rows(self) -> int:
        return int(self.correct.size)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds

    def accuracy(self, mask: np.ndarray | None = None) -> float:
        """Share right among the scored labelled rows (of `mask`, a prefix of the stream no
        longer than this run)."""
        values = self.correct if mask is None else self.correct[: mask.size][mask]
        return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


# ---------------------------------------------------------------- tidemill


def pipeline_config(
    stream: Stream,
    landing_glob: str,
    batch_rows: int,
    model: Model,
    aggregates: Sequence[dict[str, Any]] = (),
    challengers: Sequence[Model] = (),
) -> dict[str, Any]:
    """The `[pipelines.NAME]` table tidemill runs `stream` with. Every knob the benchmark
    turns goes through here (add lags, drift settings, ... the same way)."""
    return {
        "source": {"kind": "files", "path": landing_glob, "format": "csv", "settle_seconds": 0},
        "event_time": "ts",
        "key": "id",
        "target": stream.target,
        "features": stream.features,
        "categorical": stream.categorical,
        "time_features": stream.time_features,
        "task": "classification",
        "classes": ["0", "1"],
        "model": {"estimator": model.estimator, "params": model.params},
        "challengers": [
            {"name": m.estimator, "estimator": m.estimator, "params": m.params} for m in challengers
        ],
        "batch_rows": batch_rows,
        "aggregates": list(aggregates),
    }


def tidemill_config(
    stream: Stream,
    workdir: Path,
    batch_rows: int,
    model: Model,
    aggregates: Sequence[dict[str, Any]] = (),
    challengers: Sequence[Model] = (),
) -> TidemillConfig:
    """A whole config: state and landing folder under `workdir`, one pipeline."""
    body = pipeline_config(stream, "landing/*.csv", batch_rows, model, aggregates, challengers)
    raw = {"state": {"dir": "state"}, "pipelines": {stream.name: body}}
    return parse_config(raw, workdir / "tidemill.toml")


def run_pipeline(
    stream: Stream,
    model: Model,
    batch_rows: int,
    label: str,
    aggregates: Sequence[dict[str, Any]] = (),
    challengers: Sequence[Model] = (),
) -> Run:
    """Drain `stream`, written as landing CSVs, through run_cycle; timed from the first
    cycle (which reads the files) to the empty one. Accuracy is the serving model's (the
    champion of the moment, when there are challengers)."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        stream.write_landing(workdir / "landing")
        config = tidemill_config(stream, workdir, batch_rows, model, aggregates, challengers)
        runtime = Runtime.open(config)
        runtime.publication.every_seconds = 5.0  # as `tidemill run --drain` publishes
        try:
            began = time.perf_counter()
            while (status := run_cycle(runtime, stream.name, drain=True).status) != "empty":
                if status != "committed":
                    raise RuntimeError(f"{stream.name}: cycle ended '{status}'")
            seconds = time.perf_counter() - began
            predictions = runtime.con.sql(
                f"SELECT id::VARCHAR AS id, prediction FROM ml.{stream.name}_predictions"
            ).pl()
            logged = runtime.con.execute(
                "SELECT sum(value * n_scored) / sum(n_scored) FROM ml.batch_metrics "
                "WHERE pipeline = ? AND metric = 'accuracy' AND candidate = 'main'",
                [stream.name],
            ).fetchone()
        finally:
            runtime.con.close()
    outcome = (
        stream.events.select(pl.col("id").cast(pl.Utf8), stream.target)
        .join(predictions, on="id", how="left")
        .select(
            pl.when(pl.col(stream.target).is_null() | pl.col("prediction").is_null())
            .then(None)
            .otherwise(pl.col("prediction") == pl.col(stream.target))
            .cast(pl.Float64)
        )
        .to_series()
        .to_numpy()
    )
    run = Run(stream.name, "tidemill pipeline", label, batch_rows, seconds, outcome)
    checkable = not challengers  # with challengers the serving candidate changes
    if checkable and logged and logged[0] is not None and abs(logged[0] - run.accuracy()) > 1e-9:
        print(
            f"warning: {stream.name} b{batch_rows}: ml.batch_metrics says {logged[0]:.6f}, "
            f"predictions say {run.accuracy():.6f}",
            file=sys.stderr,
        )
    return run


def run_core(stream: Stream, model: Model, batch_rows: int, label: str) -> Run:
    """tidemill's model step batch by batch on in-memory frames, as run_cycle takes it
    (`tasks.learn.prequential.prequential_step`: encoder update, score, metrics, drift detector,
    partial_fit; a batch with no label changes nothing), with no validation, storage or
    artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        config: PipelineConfig = tidemill_config(stream, Path(tmp), batch_rows, model).pipeline(
            stream.name
        )
    # Batches cut in landing order and cleaned one by one, as the pipeline takes them from
    # its inbox (clean_rows orders a batch by event time, then key).
    events = stream.events.with_columns(pl.col("id").cast(pl.Utf8))
    row_of = {key: i for i, key in enumerate(events["id"].to_list())}
    batches = []
    for start in range(0, events.height, batch_rows):
        cleaned = clean_rows(
            events.slice(start, batch_rows),
            event_time=config.event_time,
            key=config.key,
            features=config.features or [],
            target=config.target,
            time_features=config.time_features,
        )
        batches.append((cleaned, np.array([row_of[key] for key in cleaned["id"].to_list()])))
    correct = np.full(events.height, np.nan)
    state = fresh_model(config)
    began = time.perf_counter()
    for frame, rows in batches:
        step = prequential_step(state, frame, stream.target)
        if step.scores is not None:
            y = frame[stream.target].to_numpy()
            labelled = np.flatnonzero(y != None)  # noqa: E711 (an object array of str/None)
            correct[rows[labelled]] = step.scores.predictions[labelled] == y[labelled]
        if step.rows_learned:
            state = step.learned
    seconds = time.perf_counter() - began
    return Run(stream.name, "tidemill core", label, batch_rows, seconds, correct)


# ---------------------------------------------------------------- River


def _on_circle(x: dict[str, Any]) -> dict[str, float]:
    periods = {"hour": 24, "weekday": 7, "month": 12}
    out = {}
    for name, value in x.items():
        angle = value * 2 * math.pi / periods[name]
        out[f"{name}_sin"], out[f"{name}_cos"] = math.sin(angle), math.cos(angle)
    return out


def river_model(name: str, stream: Stream) -> Any:
    """A fresh River model as its users build one for `stream`'s columns."""
    from river import compose, forest, linear_model, preprocessing, tree

    if name == "Hoeffding tree":
        return tree.HoeffdingTreeClassifier()
    if name == "adaptive random forest":
        return forest.ARFClassifier(seed=42)
    parts: list[Any] = [compose.Select(*stream.numeric) | preprocessing.StandardScaler()]
    if stream.time_features:
        parts.append(compose.Select(*stream.time_features) | compose.FuncTransformer(_on_circle))
    if stream.categorical:
        parts.append(compose.Select(*stream.categorical) | preprocessing.OneHotEncoder())
    return compose.TransformerUnion(*parts) | linear_model.LogisticRegression()


def run_river(stream: Stream, name: str) -> Run:
    """predict_one then learn_one per row (unlabelled rows are only predicted)."""
    data = stream.river_rows()
    model = river_model(name, stream)
    correct = np.full(len(data), np.nan)
    began = time.perf_counter()
    for i, (x, y) in enumerate(data):
        predicted = model.predict_one(x)
        if y is None:
            continue
        if predicted is not None:
            correct[i] = float(predicted == y)
        model.learn_one(x, y)
    seconds = time.perf_counter() - began
    return Run(stream.name, "River", name, 1, seconds, correct)


def run_majority(stream: Stream) -> Run:
    """The floor: predict the label seen most often so far (ties: 0), learn every row."""
    began = time.perf_counter()
    y = stream.labels()
    labelled = np.isfinite(y)
    ones = np.cumsum(np.where(labelled, y, 0.0)) - np.where(labelled, y, 0.0)
    seen = np.cumsum(labelled) - labelled
    guess = (ones > seen - ones).astype(np.float64)
    correct = np.where(labelled & (seen > 0), (guess == y).astype(np.float64), np.nan)
    return Run(
        stream.name, "baseline", "majority class so far", 1, time.perf_counter() - began, correct
    )


# ---------------------------------------------------------------- report


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A markdown table; the first `left` columns align left, the rest right."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    rule = [("-" * w if i < left else "-" * (w - 1) + ":") for i, w in enumerate(widths)]
    lines = [header, rule, *rows]
    return "\n".join(
        "| "
        + " | ".join(
            str(c).ljust(w) if i < left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        + " |"
        for line in lines
    )


def _times(ratio: float) -> str:
    return f"{ratio:.2g}x" if ratio < 10 else f"{ratio:,.0f}x"


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.2f}"


def results_table(runs: list[Run], streams: list[str]) -> str:
    """One line per (side, model, batch); per stream: rows/s and accuracy (rows run)."""
    lines: dict[tuple[str, str, int], dict[str, Run]] = {}
    for run in runs:
        lines.setdefault((run.side, run.model, run.batch), {})[run.stream] = run
    header = ["side", "model", "batch"]
    for name in streams:
        header += [f"{name} rows/s", f"{name} acc % (rows)"]
    rows = []
    for (side, model, batch), cells in lines.items():
        row = [side, model, str(batch)]
        for name in streams:
            cell = cells.get(name)
            row += (
                [
                    "—" if cell.side == "baseline" else f"{cell.rate:,.0f}",
                    f"{_pct(cell.accuracy())} ({cell.rows:,})",
                ]
                if cell
                else ["—", "—"]
            )
        rows.append(row)
    return _markdown(header, rows, left=2)


def _shared_rows(runs: Sequence[Run]) -> np.ndarray:
    """Mask over the shortest run's rows: the rows every run in `runs` scored."""
    shortest = min(r.rows for r in runs)
    mask = np.ones(shortest, dtype=bool)
    for run in runs:
        mask &= np.isfinite(run.correct[:shortest])
    return mask


def accuracy_goals(runs: list[Run], streams: list[str], default: str) -> str:
    """Per stream, every model on the rows that the default estimator's core lines at
    batches of 50 and 500 and every River model all scored, and whether the goals hold:
    tidemill within 1 point of River's best, and above River's logistic regression."""
    header = ["stream", "shared rows", f"tidemill {default} b50 / b500"]
    header += [f"River {name}" for name in RIVER_MODELS]
    header += ["majority so far", "best other tidemill line", "<= 1 pt from River's best"]
    header += ["> River LR"]
    rows = []
    for stream in streams:
        mine = [r for r in runs if r.stream == stream]
        river = {r.model: r for r in mine if r.side == "River"}
        core = {(r.model, r.batch): r for r in mine if r.side == "tidemill core"}
        ours = [core[(default, b)] for b in GOAL_BATCHES if (default, b) in core]
        if not ours or len(river) < len(RIVER_MODELS):
            continue
        mask = _shared_rows([*ours, *river.values()])
        baseline = next((r for r in mine if r.side == "baseline"), None)
        mine_best = max(r.accuracy(mask) for r in ours)
        river_best = max(r.accuracy(mask) for r in river.values())
        others = [
            r
            for r in mine
            if r.side.startswith("tidemill")
            and r.batch >= 50
            and r.rows >= mask.size
            and r not in ours
            and not (r.side == "tidemill pipeline" and r.model == default)  # = the core's
        ]
        other = max(others, key=lambda r: r.accuracy(mask), default=None)
        rows.append(
            [
                stream,
                f"{int(mask.sum()):,} of {mask.size:,}",
                " / ".join(_pct(r.accuracy(mask)) for r in ours),
                *[_pct(river[name].accuracy(mask)) for name in RIVER_MODELS],
                _pct(baseline.accuracy(mask)) if baseline else "—",
                f"{other.model} b{other.batch} {_pct(other.accuracy(mask))}" if other else "—",
                f"{'met' if mine_best >= river_best - 0.01 else 'MISSED'} "
                f"({100 * (mine_best - river_best):+.2f} pt)",
                "met" if mine_best > river["logistic regression"].accuracy(mask) else "MISSED",
            ]
        )
    return _markdown(header, rows)


def speed_goals(runs: list[Run], streams: list[str], default: str) -> str:
    """Per stream, tidemill's rows/s at batches of 50 and 500 divided by River's learn_one
    rows/s (fastest / slowest River model), and which lines reach 100x. The goal asks it
    of every line at >= 50-row batches against River's fastest model."""
    names = [(side, b) for side in ("pipeline", "core") for b in GOAL_BATCHES]
    header = ["stream", *[f"{side} b{b}" for side, b in names]]
    header += ["lines >= 100x fastest River", "lines >= 100x slowest River"]
    rows = []
    for stream in streams:
        mine = [r for r in runs if r.stream == stream]
        river = [r for r in mine if r.side == "River"]
        cells = {
            (r.side.removeprefix("tidemill "), r.batch): r.rate
            for r in mine
            if r.side.startswith("tidemill") and r.model == default and r.batch in GOAL_BATCHES
        }
        if not river or set(cells) != set(names):
            continue
        fast, slow = max(r.rate for r in river), min(r.rate for r in river)

        def reaching(bar: float, cells: dict[tuple[str, int], float] = cells) -> str:
            hits = [f"{side} b{b}" for side, b in names if cells[(side, b)] >= 100 * bar]
            return ", ".join(hits) or "none"

        rows.append(
            [
                stream,
                *[f"{_times(cells[n] / fast)} / {_times(cells[n] / slow)}" for n in names],
                reaching(fast),
                reaching(slow),
            ]
        )
    return _markdown(header, rows)


# ---------------------------------------------------------------- main


def default_model() -> Model:
    """The estimator and params of the flights pipeline in the repo's tidemill.toml."""
    raw = tomllib.loads((REPO / "tidemill.toml").read_text())
    spec = raw["pipelines"]["flights"]["model"]
    return Model(spec["estimator"], dict(spec.get("params", {})))


def flights_aggregates() -> list[dict[str, Any]]:
    """The window aggregates of the flights pipeline in the repo's tidemill.toml."""
    raw = tomllib.loads((REPO / "tidemill.toml").read_text())
    return list(raw["pipelines"]["flights"].get("aggregates", []))


@dataclass(frozen=True)
class Job:
    """One line of the table on one stream, not yet run."""

    side: str  # baseline | River | tidemill core | tidemill pipeline
    model: str  # River model name, or the tidemill line's label
    batch: int
    rows: int  # rows from the start of the stream it runs on (at most all of them)
    estimator: Model | None = None  # tidemill only
    aggregates: tuple[dict[str, Any], ...] = ()  # tidemill pipeline only
    challengers: tuple[Model, ...] = ()  # tidemill pipeline only

    def run(self, stream: Stream) -> Run:
        """Run this line on the first `rows` rows of `stream`."""
        head = stream.head(self.rows)
        if self.side == "baseline":
            return run_majority(head)
        if self.side == "River":
            return run_river(head, self.model)
        assert self.estimator is not None
        if self.side == "tidemill core":
            return run_core(head, self.estimator, self.batch, self.model)
        return run_pipeline(
            head, self.estimator, self.batch, self.model, self.aggregates, self.challengers
        )


def plan(stream: Stream, limits: Limits, model: Model, extras: Sequence[str]) -> list[Job]:
    """Every line of the table on `stream`, cheapest first."""
    n = stream.rows
    label = model.estimator
    jobs = [Job("baseline", "majority class so far", 1, n)]
    jobs += [
        Job("River", name, 1, min(limits.arf, n) if name == "adaptive random forest" else n)
        for name in RIVER_MODELS
    ]
    jobs += [
        Job("tidemill core", label, b, min(limits.core_batch_1, n) if b == 1 else n, model)
        for b in BATCHES
    ]
    jobs += [
        Job("tidemill core", extra, b, n, Model(extra)) for extra in extras for b in GOAL_BATCHES
    ]
    jobs += [
        Job("tidemill pipeline", label, b, min(limits.pipeline.get(b, n), n), model)
        for b in BATCHES
    ]
    if CHALLENGER:  # champion/challenger: the challenger serves once it is clearly better
        jobs.append(
            Job(
                "tidemill pipeline",
                f"{label}, {CHALLENGER} challenger",
                50,
                n,
                model,
                challengers=(Model(CHALLENGER),),
            )
        )
    if stream.name == "flights":  # tidemill.toml's own features: + previous-window late rates
        aggregates = tuple(flights_aggregates())
        jobs += [
            Job("tidemill pipeline", f"{label} + window aggregates", b, n, model, aggregates)
            for b in GOAL_BATCHES
        ]
    return jobs


def main() -> None:
    restrict_umask()  # a tidemill process: state folders private, as the CLI makes them
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, help=f"rows of the flights and drift streams (default {DEFAULT.rows:,})"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"a smoke run: {QUICK.rows:,} rows, small prefixes"
    )
    parser.add_argument(
        "--arf-rows",
        type=int,
        help=f"most rows for River's adaptive random forest (default {DEFAULT.arf:,})",
    )
    parser.add_argument(
        "--streams", default="flights,phishing,drift", help="comma-separated subset to run"
    )
    parser.add_argument(
        "--estimator", help="tidemill estimator (default: the one in tidemill.toml)"
    )
    parser.add_argument(
        "--params", help="its params as JSON (default: tidemill.toml's, or none with --estimator)"
    )
    parser.add_argument(
        "--extra-estimators",
        default=",".join(EXTRA_ESTIMATORS),
        help="more tidemill estimators for the model core at batches 50 and 500 ('' for none)",
    )
    args = parser.parse_args()
    base = QUICK if args.quick else DEFAULT
    rows = args.rows or base.rows
    if rows < 100:
        parser.error(f"--rows must be at least 100 (got {rows})")
    limits = Limits(
        rows=rows,
        pipeline={b: min(n, rows) for b, n in base.pipeline.items()},
        core_batch_1=min(base.core_batch_1, rows),
        arf=min(args.arf_rows or base.arf, rows),
    )
    model = default_model()
    if args.estimator:
        model = Model(args.estimator, {})
    if args.params:
        try:
            model = Model(model.estimator, json.loads(args.params))
        except json.JSONDecodeError as error:
            parser.error(f"--params must be a JSON object, e.g. '{{\"alpha\": 0.001}}' ({error})")
    makers = {
        "flights": lambda: flights_stream(limits.rows),
        "phishing": phishing_stream,
        "drift": lambda: drift_stream(limits.rows),
    }
    names = [n.strip() for n in args.streams.split(",") if n.strip()]
    unknown = [n for n in names if n not in makers]
    if unknown or not names:
        parser.error(f"--streams: unknown {unknown}; choose from {', '.join(makers)}")
    extras = [e.strip() for e in args.extra_estimators.split(",") if e.strip()]

    began = time.perf_counter()
    runs: list[Run] = []
    for name in names:
        stream = makers[name]()
        for job in plan(stream, limits, model, extras):
            _progress(f"{name}: {job.side} {job.model} b{job.batch} ({job.rows:,} rows)")
            runs.append(job.run(stream))
    elapsed = time.perf_counter() - began

    import river  # benchmark-only dependency, already imported by the River runs

    command = "python benchmarks/accuracy.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print("# tidemill vs River: prequential accuracy and rows/s\n")
    print(f"command: `{command.strip()}`  ")
    print(
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        "2 shared cores (other work running); "
        f"python {platform.python_version()}, river {river.__version__}  "
    )
    print(
        f"tidemill estimator: {model.estimator} {json.dumps(model.params)}; "
        f"wall time {elapsed / 60:.1f} min\n"
    )
    print(results_table(runs, names))
    print(
        "\nrows/s counts every row; accuracy counts the labelled rows a model scored "
        "(the first batch is scored by nothing). (rows): how many rows from the start of "
        "the stream the line ran; a line with fewer rows than the stream ran a prefix. "
        "Pipeline and core lines of the same batch size make the same predictions on the "
        "rows both ran (checked at the end).\n"
    )
    print("## goals\n")
    print(accuracy_goals(runs, names, model.estimator))
    print(
        "\naccuracy % on the rows every model of the line scored (the ARF prefix, less "
        "the rows the first batch of 500 leaves unscored); best other tidemill line: "
        "another estimator, champion/challenger, or the flights pipeline with "
        "tidemill.toml's window aggregates.\n"
    )
    print(speed_goals(runs, names, model.estimator))
    print(
        f"\n{model.estimator} rows/s divided by River's fastest / slowest learn_one model "
        "on the same stream. Rates move by up to 2x between runs on the shared machine; "
        "accuracies are deterministic.\n"
    )
    for name in names:
        print(f"- {name}: {_agreement(runs, name)}")


def _agreement(runs: list[Run], stream: str) -> str:
    """How often the pipeline and the model core got the same rows right at equal batches."""
    parts = []
    for pipe in (r for r in runs if r.stream == stream and r.side == "tidemill pipeline"):
        core = next(
            (
                r
                for r in runs
                if r.stream == stream
                and r.side == "tidemill core"
                and r.model == pipe.model
                and r.batch == pipe.batch
            ),
            None,
        )
        if core is None:
            continue
        n = min(pipe.rows, core.rows)
        both = np.isfinite(pipe.correct[:n]) & np.isfinite(core.correct[:n])
        same = float((pipe.correct[:n][both] == core.correct[:n][both]).mean())
        parts.append(f"b{pipe.batch} {100 * same:.2f} %")
    return "pipeline and core agree on " + ", ".join(parts) if parts else "no pipeline lines"


if __name__ == "__main__":
    main()
