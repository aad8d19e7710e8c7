"""Charts of a pipeline's history, as PNG bytes: pure functions of Polars frames.

matplotlib's object API on the Agg canvas (no pyplot and its global figures), so charts
can be drawn from any thread of a worker. Inputs are the frames of warehouse/reports.py.
"""

from __future__ import annotations

import io
import json

import polars as pl
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tidemill.tasks.report.page import ReportData

STEPS = ("ingest", "read", "validate", "clean", "aggregate", "learn", "artifact", "write")
"""The cycle's steps, in order, as CycleReport times them."""


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _figure() -> Figure:
    figure = Figure(figsize=(8, 3.2))
    figure.set_layout_engine("constrained")
    return figure


def _batch_axis(axes: Axes) -> None:
    """Batches are whole numbers: no tick at batch 2.5."""
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("batch")


def metric_chart(metrics: pl.DataFrame, metric: str, drift_batches: list[int]) -> bytes:
    """Prequential `metric` per batch, one line per candidate; drift events as dashed
    vertical lines."""
    figure = _figure()
    axes = figure.add_subplot()
    rows = metrics.filter(pl.col("metric") == metric)
    for (candidate,), part in rows.group_by("candidate", maintain_order=True):
        axes.plot(part["batch_id"], part["value"], label=str(candidate), linewidth=1.2)
    for batch in drift_batches:
        axes.axvline(batch, color="tab:red", linestyle="--", linewidth=0.8, alpha=0.6)
    axes.set(ylabel=metric, title=f"prequential {metric} (test, then train)")
    _batch_axis(axes)
    if rows.height:
        axes.legend(loc="best", fontsize="small")
    axes.grid(alpha=0.3)
    return _png(figure)


def rows_chart(batches: pl.DataFrame) -> bytes:
    """Rows accepted and quarantined per batch (stacked bars) and the quarantine rate."""
    figure = _figure()
    axes = figure.add_subplot()
    ids = batches["batch_id"].to_list()
    accepted = batches["rows_accepted"].to_list()
    axes.bar(ids, accepted, label="accepted", color="tab:blue", width=0.9)
    axes.bar(
        ids,
        batches["rows_quarantined"].to_list(),
        bottom=accepted,
        label="quarantined",
        color="tab:orange",
        width=0.9,
    )
    axes.set(ylabel="rows", title="rows per batch")
    _batch_axis(axes)
    rate = axes.twinx()
    share: list[float] = (
        batches.select(pl.col("rows_quarantined") / pl.max_horizontal(pl.col("rows_in"), 1) * 100)
        .to_series()
        .to_list()
    )
    rate.plot(ids, share, color="black", linewidth=1, label="quarantined %")
    rate.set_ylabel("quarantined %")
    rate.set_ylim(0, max([1.0, *share]) * 1.1)
    axes.legend(loc="upper left", fontsize="small")
    return _png(figure)


def step_times(batches: pl.DataFrame) -> pl.DataFrame:
    """One column per step (ms) of each batch's `timings_json`; 0 where a step did not run."""
    timings = [json.loads(text or "{}") for text in batches["timings_json"].to_list()]
    return pl.DataFrame(
        {"batch_id": batches["batch_id"]}
        | {step: [float(t.get(step, 0.0)) for t in timings] for step in STEPS}
    )


def latency_chart(batches: pl.DataFrame) -> bytes:
    """Batch latency split by step (stacked areas, ms)."""
    times = step_times(batches)
    figure = _figure()
    axes = figure.add_subplot()
    axes.stackplot(
        times["batch_id"].to_list(), *[times[s].to_list() for s in STEPS], labels=list(STEPS)
    )
    axes.set(ylabel="ms", title="batch latency by step")
    _batch_axis(axes)
    axes.legend(loc="upper left", fontsize="x-small", ncol=4)
    axes.grid(alpha=0.3)
    return _png(figure)


def page_charts(data: ReportData) -> list[tuple[str, bytes]]:
    """The charts as (title, PNG): the prequential metrics per candidate with drift
    events, then, once a batch committed, rows per batch and latency by step."""
    metrics, drift = data.metrics, data.drift
    drift_batches = sorted(set(drift["batch_id"].to_list())) if drift.height else []
    drawn = [
        (f"prequential {metric}", metric_chart(metrics, metric, drift_batches))
        for metric in (sorted(set(metrics["metric"].to_list())) if metrics.height else [])
    ]
    if data.batches.height:
        drawn += [
            ("rows per batch", rows_chart(data.batches)),
            ("batch latency by step", latency_chart(data.batches)),
        ]
    return drawn
