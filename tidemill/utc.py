"""Times as the warehouse keeps them: naive datetimes in UTC (DuckDB TIMESTAMP)."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current time, naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def naive(moment: datetime) -> datetime:
    """`moment` as naive UTC: an aware time is converted, a naive one is taken as UTC."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
