"""`tidemill run`: micro-batches of one pipeline in this process, live or drained."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from tidemill.cli import session
from tidemill.cli.output import err, out, progress_bar
from tidemill.errors import TidemillError


def run(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name from the config.")],
    drain: Annotated[
        bool,
        typer.Option("--drain", help="Process everything available, then exit with a summary."),
    ] = False,
    max_batches: Annotated[
        int | None,
        typer.Option("--max-batches", min=1, help="Stop after this many committed batches."),
    ] = None,
) -> None:
    """Run micro-batches of PIPELINE in this process (no Prefect needed).

    Without --drain it runs one batch every `every_seconds` until Ctrl-C. While it runs,
    `tidemill query` reaches the warehouse through this process.
    """
    from tidemill.deployments import owner
    from tidemill.flows.engine.drive import drive
    from tidemill.flows.engine.runtime import Runtime
    from tidemill.tasks.sources.loader import source_for

    config = session.owner(pipeline)
    spec = config.pipeline(pipeline)
    runtime = Runtime.open(config, serve=True)
    service = owner.serve(runtime)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    seen: list[Any] = []
    reports: list[Any] = []
    started = time.perf_counter()
    if drain and runtime.publication.enabled:  # while draining: a snapshot every 5 s at most
        runtime.publication.every_seconds = max(runtime.publication.every_seconds, 5.0)
    else:
        err.print(f"running {pipeline} every {spec.every_seconds:g}s; Ctrl-C stops")
    try:
        with progress_bar("rows") if drain else contextlib.nullcontext() as progress:
            bar = progress.add_task(f"draining {pipeline}", total=None) if progress else None

            def show(report: Any) -> None:
                seen.append(report)
                if report.status == "failed":
                    err.print(
                        f"[red]batch {report.batch_id} of {pipeline} failed: {report.error}[/red]"
                    )
                elif report.status == "committed" and progress is not None and bar is not None:
                    done = sum(r.rows_in for r in seen if r.status == "committed")
                    progress.update(bar, completed=done, total=done + report.backlog)
                elif report.status == "committed":
                    err.print(_one_line(report))

            reports = drive(
                runtime,
                pipeline,
                pace="drain" if drain else "live",
                on_cycle=show,
                stop=stop,
                max_batches=max_batches,
            )
        if drain and seen and seen[-1].status == "waiting":
            source = source_for(spec, config.state_dir)
            raise TidemillError(f"{pipeline}: no landing files match {source.label}")
    except KeyboardInterrupt:
        err.print("stopped")
    finally:
        service.close()
        runtime.close()
    _summary(pipeline, reports, time.perf_counter() - started)


def _one_line(report: Any) -> str:
    metrics = " ".join(f"{k}={v:.4f}" for k, v in report.metrics.items())
    return (
        f"batch {report.batch_id}: {report.rows_in} in, {report.rows_accepted} accepted, "
        f"{report.rows_quarantined} quarantined, learned {report.rows_learned} -> "
        f"v{report.model_version} {metrics}"
    )


def _summary(pipeline: str, reports: list[Any], seconds: float) -> None:
    table = Table(title=f"{pipeline}: {len(reports)} batches in {seconds:.1f}s")
    for column in ("batches", "rows in", "accepted", "quarantined", "learned", "model", "rows/s"):
        table.add_column(column, justify="right")
    rows_in = sum(r.rows_in for r in reports)
    table.add_row(
        str(len(reports)),
        str(rows_in),
        str(sum(r.rows_accepted for r in reports)),
        str(sum(r.rows_quarantined for r in reports)),
        str(sum(r.rows_learned for r in reports)),
        f"v{reports[-1].model_version}" if reports and reports[-1].model_version else "-",
        f"{rows_in / seconds:,.0f}" if seconds > 0 else "-",
    )
    out.print(table)
    scored = [r for r in reports if r.metrics]
    if scored:
        names = sorted({m for r in scored for m in r.metrics})
        means = {m: sum(r.metrics.get(m, 0.0) for r in scored) / len(scored) for m in names}
        out.print(
            "prequential (mean over batches): "
            + ", ".join(f"{m}={v:.4f}" for m, v in means.items())
        )
