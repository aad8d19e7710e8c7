"""Which model artifacts keep their file: the registry's retention policy.

A micro-batch every 5 s writes about 17,000 artifact files a day. Every version keeps
its registry row for good (lineage, metrics, hash); only the joblib file of a version
nobody is likely to load again may go. A version keeps its file when it is

- a current head: status champion, challenger or candidate;
- named by a model event (either side of a promote, rollback or automatic promotion):
  a person or the promotion rule chose it, or a rollback returns to it;
- the parent of the champion (where a rollback goes when no promotion is to be undone);
- one of the last `keep_last` versions of its candidate lineage;
- the latest version of its clock hour, among versions created in the last `hourly_hours`;
- the latest version of its UTC day, among versions created in the last `daily_days`.

With the defaults (50, 48 h, 30 d) a pipeline at a 5 s cadence keeps about 130 files per
candidate, whatever its age. The decision never brings a pruned version back: a version
outside every rule now stays outside as time passes (versions only get newer), so it can
be taken on the versions whose file is still there and gives the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

HEAD_STATUSES = ("champion", "challenger", "candidate")

VERSION_SCHEMA: dict[str, pl.DataType] = {
    "version": pl.Int64(),
    "parent_version": pl.Int64(),
    "created_at": pl.Datetime("us"),
    "status": pl.String(),
    "named_by_event": pl.Boolean(),
}
"""Columns `retention_reasons` needs (an optional `candidate` String column splits the
last-K and hourly/daily rules per candidate lineage)."""


@dataclass(frozen=True)
class RetentionPolicy:
    """How many artifact files a pipeline keeps besides its heads and chosen versions."""

    keep_last: int = 50
    """Newest versions kept per candidate (50 ≈ 4 minutes of batches at a 5 s cadence)."""
    hourly_hours: int = 48
    """Keep the latest version of each hour for this many hours."""
    daily_days: int = 30
    """Keep the latest version of each UTC day for this many days."""

    def __post_init__(self) -> None:
        if self.keep_last < 1:
            raise ValueError(f"keep_last must be at least 1 (got {self.keep_last})")
        if self.hourly_hours < 0 or self.daily_days < 0:
            raise ValueError(
                "hourly_hours and daily_days must be 0 (rule off) or more "
                f"(got {self.hourly_hours}, {self.daily_days})"
            )


def _latest_of_bucket(every: str, since: datetime, lineage: list[str]) -> pl.Expr:
    """True for the newest version of each `every` bucket among versions created since."""
    recent = pl.col("created_at") >= since
    bucket = pl.col("created_at").dt.truncate(every)
    newest = pl.when(recent).then(pl.col("version")).max().over([*lineage, bucket])
    return recent & (pl.col("version") == newest)


def retention_reasons(
    versions: pl.LazyFrame, policy: RetentionPolicy, now: datetime
) -> pl.LazyFrame:
    """One row per version of ONE pipeline: `version` and `keep_reason`, the first rule that
    keeps its artifact (head, event, rollback_target, last, hourly, daily), null when the
    file may be pruned. `now` and `created_at` are naive UTC. Assumes unique versions."""
    lineage = ["candidate"] if "candidate" in versions.collect_schema().names() else []
    champion_parents = (
        pl.col("parent_version").filter(pl.col("status") == "champion").drop_nulls().implode()
    )
    newest_first = pl.col("version").rank("ordinal", descending=True)
    if lineage:
        newest_first = newest_first.over(lineage)
    hourly = (
        _latest_of_bucket("1h", now - timedelta(hours=policy.hourly_hours), lineage)
        if policy.hourly_hours
        else pl.lit(False)
    )
    daily = (
        _latest_of_bucket("1d", now - timedelta(days=policy.daily_days), lineage)
        if policy.daily_days
        else pl.lit(False)
    )
    reason = (
        pl.when(pl.col("status").is_in(HEAD_STATUSES))
        .then(pl.lit("head"))
        .when(pl.col("named_by_event"))
        .then(pl.lit("event"))
        .when(pl.col("version").is_in(champion_parents))
        .then(pl.lit("rollback_target"))
        .when(newest_first <= policy.keep_last)
        .then(pl.lit("last"))
        .when(hourly)
        .then(pl.lit("hourly"))
        .when(daily)
        .then(pl.lit("daily"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    return versions.select(pl.col("version"), reason.alias("keep_reason")).sort("version")


def prunable_versions(versions: pl.LazyFrame, policy: RetentionPolicy, now: datetime) -> set[int]:
    """Versions (of one pipeline) whose artifact file no retention rule keeps."""
    decided = retention_reasons(versions, policy, now).filter(pl.col("keep_reason").is_null())
    return set(decided.collect()["version"].to_list())
