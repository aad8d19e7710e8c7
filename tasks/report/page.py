"""The report page of a pipeline: one self-contained HTML page (charts, model registry,
data quality) that opens in a browser without a server: the charts are PNGs inlined as
data: URLs, and the page has no script and no external link. Drawn from frames; the
frames are read by warehouse/reports.py (`report_data`)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

REGISTRY_ROWS = 50
"""Newest registry rows shown (every version stays in ml.model_versions)."""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { margin-bottom: 0; } .meta { color: #666; margin-top: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
"""


def data_url(png: bytes) -> str:
    """A PNG as a `data:` URL, for a page or a markdown artifact that holds its images."""
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def _table(frame: pl.DataFrame, empty: str) -> str:
    if frame.height == 0:
        return f"<p>{html.escape(empty)}</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = []
    for row in frame.iter_rows():
        cells = "".join(
            f'<td class="n">{v}</td>'
            if isinstance(v, int | float)
            else f"<td>{html.escape('' if v is None else str(v))}</td>"
            for v in row
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


@dataclass(frozen=True)
class ReportData:
    """What a report shows, read once."""

    batches: pl.DataFrame  # committed batches, in order
    metrics: pl.DataFrame
    drift: pl.DataFrame
    registry: pl.DataFrame
    reasons: pl.DataFrame


def render_page(
    pipeline: str, data: ReportData, drawn: list[tuple[str, bytes]], *, source: str
) -> str:
    """The HTML page of `pipeline` with the charts `drawn`; `source` names where `data`
    was read (owner, file or snapshot)."""
    batches, drift, registry = data.batches, data.drift, data.registry
    images = "".join(
        f'<img alt="{html.escape(title)}" src="{data_url(png)}">' for title, png in drawn
    )
    rows_in = int(batches["rows_in"].sum()) if batches.height else 0
    quarantined = int(batches["rows_quarantined"].sum()) if batches.height else 0
    shown = (
        registry.head(REGISTRY_ROWS).select(
            "version",
            "candidate",
            "status",
            "batch_id",
            "batches_seen",
            "rows_seen",
            "created_at",
            pl.col("sha256").str.slice(0, 12).alias("sha256"),
            "estimator",
        )
        if registry.height
        else registry
    )
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    summary = pl.DataFrame(
        {
            "batches": [batches.height],
            "rows in": [rows_in],
            "quarantined": [quarantined],
            "quarantined %": [round(100 * quarantined / rows_in, 2) if rows_in else 0.0],
            "model versions": [registry.height],
            "drift events": [drift.height],
        }
    )
    name = html.escape(pipeline)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>tidemill report: {name}</title><style>{_STYLE}</style></head>
<body>
<h1>tidemill report: {name}</h1>
<p class="meta">generated {now}, read via {html.escape(source)}</p>
{_table(summary, "")}
<h2>Charts</h2>
{images or "<p>No committed batch yet.</p>"}
<h2>Model registry (newest {REGISTRY_ROWS})</h2>
{_table(shown, "No model version yet.")}
<h2>Data quality: quarantine reasons</h2>
{_table(data.reasons, "Nothing was quarantined.")}
<h2>Drift events</h2>
{_table(drift.head(20), "No drift detected.")}
</body></html>
"""
