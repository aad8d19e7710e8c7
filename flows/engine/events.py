"""What a batch tells the world: the Prefect events a run emits (failure, quarantine spike,
drift, promotion) and its log lines, built from the cycle's report (no Prefect here)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from tidemill.flows.engine.cycle import CycleReport

QUARANTINE_SPIKE = 0.2  # share of a batch's rows; above it the flow emits an event


@dataclass(frozen=True)
class RunEvent:
    """One thing to say about a batch: an event to emit (`name`; None for a log line
    only) with its payload, and the log line that goes with it."""

    name: str | None
    pipeline: str
    level: int
    message: str
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def resource(self) -> dict[str, str]:
        """The Prefect resource the event is about: the pipeline."""
        return {
            "prefect.resource.id": f"tidemill.pipeline.{self.pipeline}",
            "prefect.resource.name": self.pipeline,
        }


def batch_events(report: CycleReport) -> list[RunEvent]:
    """The events and log lines of one cycle, in the order they are said."""
    name, batch = report.pipeline, report.batch_id
    if report.status == "failed":
        return [
            RunEvent(
                "tidemill.batch.failed",
                name,
                logging.ERROR,
                f"batch {batch} of {name} failed: {report.error}",
                {"batch_id": batch, "error": report.error},
            )
        ]
    said: list[RunEvent] = []
    if report.rows_in and report.rows_quarantined / report.rows_in > QUARANTINE_SPIKE:
        said.append(
            RunEvent(
                "tidemill.quarantine.spike",
                name,
                logging.WARNING,
                f"batch {batch}: {report.rows_quarantined} of {report.rows_in} rows quarantined",
                {
                    "batch_id": batch,
                    "rows_in": report.rows_in,
                    "rows_quarantined": report.rows_quarantined,
                },
            )
        )
    for drift in report.drift:
        said.append(
            RunEvent(
                "tidemill.drift.detected",
                name,
                logging.WARNING,
                f"batch {batch}: drift {drift}",
                {"batch_id": batch, **asdict(drift)},
            )
        )
    for change in report.promotions:
        said.append(
            RunEvent(
                "tidemill.model.promoted",
                name,
                logging.INFO,
                f"batch {batch}: {change.reason}",
                {"batch_id": batch, **asdict(change)},
            )
        )
    if report.status == "committed":
        line = (
            f"batch {batch}: {report.rows_in} in, {report.rows_accepted} accepted, "
            f"{report.rows_quarantined} quarantined, learned {report.rows_learned} -> "
            f"v{report.model_version} {report.metrics}"
        )
    else:
        line = f"{name}: {report.status} (backlog {report.backlog})"
    said.append(RunEvent(None, name, logging.INFO, line))
    return said
