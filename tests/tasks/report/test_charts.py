"""Charts: PNG bytes from frames, and the step timings they are drawn from."""

from __future__ import annotations

import json
import struct

import polars as pl

from tidemill.tasks.report.charts import STEPS, latency_chart, metric_chart, rows_chart, step_times


def _batches() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "batch_id": [1, 2, 3],
            "rows_in": [10, 0, 8],
            "rows_accepted": [9, 0, 4],
            "rows_quarantined": [1, 0, 4],
            "timings_json": [json.dumps({"ingest": 2.5, "write": 1.0}), "{}", None],
        }
    )


def _size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def test_step_times_are_one_column_per_step_with_zero_where_a_step_did_not_run() -> None:
    times = step_times(_batches())
    assert times.columns == ["batch_id", *STEPS]
    assert times.row(0, named=True)["ingest"] == 2.5 and times.row(0, named=True)["write"] == 1.0
    assert times.row(1)[1:] == (0.0,) * len(STEPS) == times.row(2)[1:]


def test_every_chart_is_a_png_even_with_an_empty_batch_and_no_metric() -> None:
    metrics = pl.DataFrame(
        {
            "batch_id": [1, 1, 3],
            "candidate": ["a", "b", "a"],
            "metric": ["mae"] * 3,
            "value": [0.5, 0.7, 0.4],
        }
    )
    for png in (
        metric_chart(metrics, "mae", drift_batches=[3]),
        metric_chart(metrics, "rmse", drift_batches=[]),  # no such rows: an empty chart
        rows_chart(_batches()),
        latency_chart(_batches()),
    ):
        width, height = _size(png)
        assert width > 400 and height > 150
