"""The one loop around `run_cycle`, with one failure policy, for every way batches are run:

- `live`: one cycle per `every_seconds` until stopped (`tidemill run`);
- `drain`: cycles back to back until nothing is left (`tidemill run --drain`);
- `catch_up`: one cycle, and more while a full batch waits, within one cadence (the
  micro-batch flow: a backlog left by an outage is caught up at once, not one batch per
  interval).

A failed batch commits nothing; its records stay in the inbox and the committed models are
reloaded (cycle.py). Every cycle's report, failed ones included, goes to `on_cycle`; the
loop goes on with the next cycle, and stops with BatchesFailing once MAX_FAILURES batches
failed in a row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

from tidemill.errors import TidemillError
from tidemill.flows.engine.cycle import BatchFailed, CycleReport, run_cycle
from tidemill.flows.engine.runtime import Runtime

Pace = Literal["live", "drain", "catch_up"]
MAX_FAILURES = 3
"""Batches that may fail in a row before a drive gives up."""


class BatchesFailing(TidemillError, RuntimeError):
    """MAX_FAILURES batches of a pipeline failed in a row; the message names the last error."""


def drive(
    runtime: Runtime,
    pipeline: str,
    *,
    pace: Pace,
    on_cycle: Callable[[CycleReport], None] = lambda report: None,
    stop: threading.Event | None = None,
    max_batches: int | None = None,
    flow_run_id: str | None = None,
) -> list[CycleReport]:
    """Run cycles of `pipeline` at `pace` (see the module docstring) until its end, `stop`
    is set or `max_batches` committed; returns the committed cycles' reports. A drain that
    finds no source data yet ends with the `waiting` report in `on_cycle`."""
    spec = runtime.config.pipeline(pipeline)
    stop = stop or threading.Event()
    started = time.monotonic()
    committed: list[CycleReport] = []
    failures = 0
    while not stop.is_set():
        tick = time.monotonic()
        try:
            report = run_cycle(runtime, pipeline, drain=pace == "drain", flow_run_id=flow_run_id)
        except BatchFailed as failure:
            on_cycle(failure.report)
            failures += 1
            if failures >= MAX_FAILURES:
                raise BatchesFailing(
                    f"{pipeline}: {failures} batches failed in a row (the last: "
                    f"{failure.report.error}); see `tidemill status`"
                ) from failure
            report = failure.report
        else:
            failures = 0
            on_cycle(report)
            if report.status == "committed":
                committed.append(report)
        if max_batches and len(committed) >= max_batches:
            break
        if pace == "live":
            stop.wait(max(0.0, spec.every_seconds - (time.monotonic() - tick)))
        elif report.status in ("empty", "waiting"):
            break
        elif pace == "catch_up" and report.status == "committed":
            state = runtime.pipelines.states.get(pipeline)
            caught_up = state is None or report.backlog < state.batch_rows
            if caught_up or time.monotonic() - started >= spec.every_seconds:
                break
    return committed
