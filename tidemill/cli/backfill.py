"""`tidemill backfill`: re-read a window of a pipeline's source, in the owner or here."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated

import typer

from tidemill import utc
from tidemill.cli import session
from tidemill.cli.access import read_sql
from tidemill.cli.output import Format, err, print_result, progress_bar
from tidemill.config.fields import deployment_name
from tidemill.config.load import TidemillConfig
from tidemill.errors import TidemillError


def moment(text: str, option: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise TidemillError(
            f"{option} {text!r} is not an ISO date or time (e.g. 2013-01-05 or 2013-01-05T06:00Z)"
        ) from None
    return utc.naive(moment)


def backfill(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    start: Annotated[
        str,
        typer.Option(
            "--start",
            help="Window start, inclusive: ISO date/time (UTC unless an offset is given).",
        ),
    ],
    end: Annotated[str, typer.Option("--end", help="Window end, exclusive: ISO date/time.")],
    retrain: Annotated[
        bool,
        typer.Option(
            "--retrain",
            help="Also train a candidate model on the window (the champion is untouched).",
        ),
    ] = False,
) -> None:
    """Re-read PIPELINE's source for records with event time in [start, end) and insert the
    missing ones; recompute the aggregate windows they touch.

    With the platform running it becomes a run of the backfill/PIPELINE deployment (visible
    in the Prefect UI) executed by the worker between live batches; otherwise it runs here.
    Running it twice changes nothing. A second backfill of a pipeline waits for the first.
    """
    from tidemill.deployments.owner_socket import OwnerUnavailable, call_owner

    config = session.owner(pipeline)
    first, last = moment(start, "--start"), moment(end, "--end")
    if first >= last:
        raise TidemillError(f"--start {start} must be before --end {end}")
    payload = {
        "op": "backfill",
        "pipeline": pipeline,
        "start": first.isoformat(),
        "end": last.isoformat(),
        "retrain": retrain,
    }
    try:
        started = call_owner(config.state_dir, payload)
    except OwnerUnavailable:
        _backfill_here(config, pipeline, first, last, retrain)
        return
    err.print(
        f"started flow run {started['flow_run_name']} of deployment backfill/{deployment_name(pipeline)}"
    )
    _follow_backfill(config, f"prefect flow run {started['flow_run_id']}")


def _backfill_here(
    config: TidemillConfig, pipeline: str, start: datetime, end: datetime, retrain: bool
) -> None:
    from tidemill.flows.engine.backfill import run_backfill
    from tidemill.flows.engine.runtime import Runtime

    runtime = Runtime.open(config)
    try:
        with progress_bar("records") as progress:
            task = progress.add_task(f"backfilling {pipeline}", total=None)
            report = run_backfill(
                runtime,
                pipeline,
                start,
                end,
                retrain=retrain,
                requested_by=session.actor(),
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    finally:
        runtime.close()
    _backfill_summary(report.backfill_id, config)


def _follow_backfill(config: TidemillConfig, requested_by: str, timeout: float = 3600) -> None:
    from tidemill.warehouse.reports import backfill_progress_sql

    sql = backfill_progress_sql(requested_by)
    deadline = time.monotonic() + timeout
    with progress_bar("records") as progress:
        task = progress.add_task("waiting for the worker", total=None)
        while time.monotonic() < deadline:
            rows = read_sql(config.state_dir, sql)[0].rows
            if rows:
                backfill_id, state, total, done, error = rows[0]
                progress.update(
                    task, description=f"backfill {backfill_id}", completed=done, total=total or None
                )
                if state != "running":
                    break
            time.sleep(0.5)
        else:
            raise TidemillError("the backfill did not finish in time; see the Prefect UI")
    if state == "failed":
        raise TidemillError(f"backfill {backfill_id} failed: {error}")
    _backfill_summary(backfill_id, config)


def _backfill_summary(backfill_id: int, config: TidemillConfig) -> None:
    from tidemill.warehouse.reports import backfill_summary_sql

    result, _ = read_sql(config.state_dir, backfill_summary_sql(backfill_id))
    print_result(result.columns, result.rows, Format.table, title="backfill")
