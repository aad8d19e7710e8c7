"""`tidemill query`, `status` and `report`: reading the warehouse, wherever it is served."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tidemill import layout
from tidemill.cli import session
from tidemill.cli.access import NothingToRead, read_sql
from tidemill.cli.output import Format, out, print_result
from tidemill.config.load import TidemillConfig
from tidemill.errors import TidemillError


def query(
    sql: Annotated[
        str, typer.Argument(help="Read-only SQL (SELECT, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN).")
    ],
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    snapshot: Annotated[
        bool,
        typer.Option("--snapshot", help="Read the published snapshot, not the live warehouse."),
    ] = False,
    pipeline: Annotated[
        str | None,
        typer.Option(
            "--pipeline",
            "-p",
            help="Ask the worker that owns this pipeline (needed with `up --workers N`).",
        ),
    ] = None,
) -> None:
    """Run read-only SQL on the warehouse, also while the platform is writing it.

    The query runs inside the owning process when one is running (`tidemill up` or
    `tidemill run`), else on the file itself, else on the published snapshot.
    Tables: raw.P, raw.P_quarantine, clean.P, agg.P_*, ml.P_predictions,
    ml.model_versions, ml.batch_metrics, _batches, _watermarks, _files.
    With several workers each owns its pipelines' warehouse: name one with --pipeline,
    or see every owner live at once with `tidemill sql`.
    """

    config = session.config()
    workers = layout.read(config.state_dir)
    if pipeline is None and workers:
        owners = "; ".join(f"{w}: {', '.join(names)}" for w, names in workers.items())
        raise TidemillError(
            f"{len(workers)} workers share {config.state_dir} ({owners}): add --pipeline P "
            "to ask the one that owns P, or see them all at once with `tidemill sql`"
        )
    owner = session.owner(pipeline) if pipeline else config
    result, _ = read_sql(owner.state_dir, sql, snapshot=snapshot)
    print_result(result.columns, result.rows, fmt)


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Pipelines, their last batch, rows, quarantine counts, backlog and lag."""
    from tidemill.warehouse.reports import known_pipelines_sql, status_sql

    config = session.config()
    owners: dict[Path, TidemillConfig] = {}
    for name in config.pipelines:
        owner = session.owner(name)
        owners.setdefault(owner.state_dir, owner)
    columns: list[str] = []
    rows: list[Any] = []
    sources = set()
    missing: list[NothingToRead] = []
    for owner in owners.values():
        try:
            known, _ = read_sql(owner.state_dir, known_pipelines_sql())
        except NothingToRead as error:
            missing.append(error)
            continue
        names = [r[0] for r in known.rows if r[0] in owner.pipelines]
        if names:
            result, source = read_sql(owner.state_dir, status_sql(names))
            columns, rows = result.columns, [*rows, *result.rows]
            sources.add(source)
    if len(missing) == len(owners):
        raise missing[0]
    if not rows:
        raise TidemillError(
            "no pipeline has run yet: try `tidemill run PIPELINE --drain` or `make run`"
        )
    source = ", ".join(sorted(sources))
    print_result(
        columns,
        rows,
        Format.json if as_json else Format.table,
        title=f"tidemill status (read via {source})",
    )


def report(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    out_path: Annotated[
        Path, typer.Option("--out", help="Where to write the page.", dir_okay=False)
    ] = Path("report.html"),
) -> None:
    """Write one self-contained HTML page of PIPELINE: prequential metrics per candidate
    with drift events, rows and quarantine rate per batch, latency by step, the model
    registry and the quarantine reasons. It opens in any browser, without a server."""
    if not out_path.parent.is_dir():  # before minutes of drawing, not after
        raise TidemillError(f"cannot write {out_path}: folder {out_path.parent} does not exist")
    page = report_page(session.owner(pipeline).state_dir, pipeline)
    try:
        out_path.write_text(page, encoding="utf-8")
    except OSError as error:
        raise TidemillError(f"cannot write {out_path}: {error.strerror}") from None
    out.print(f"wrote {out_path} ({len(page.encode()) / 1024:.0f} KiB)")


def report_page(state_dir: Path, pipeline: str) -> str:
    """The report page of `pipeline`, read through whatever serves `state_dir` (the owner,
    the file or the snapshot: see access.py)."""
    from tidemill.tasks.report.charts import page_charts
    from tidemill.tasks.report.page import render_page
    from tidemill.warehouse.reports import report_data
    from tidemill.warehouse.serving.readonly import QueryResult

    where: list[str] = []

    def read(sql: str) -> QueryResult:
        result, source = read_sql(state_dir, sql)
        where.append(source)
        return result

    data = report_data(read, pipeline)
    return render_page(pipeline, data, page_charts(data), source=where[0])
