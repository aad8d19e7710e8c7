"""The artifact retention policy: exact decisions, and invariants over any history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidemill.tasks.judge.retention import (
    VERSION_SCHEMA,
    RetentionPolicy,
    prunable_versions,
    retention_reasons,
)

NOW = datetime(2024, 3, 10, 12, 30)


def _frame(rows: list[tuple[int, datetime, str]], **extra: Sequence[object]) -> pl.LazyFrame:
    """Versions with parent = previous version and no events unless `extra` says so."""
    versions = [v for v, _, _ in rows]
    columns: dict[str, Sequence[object]] = {
        "version": list(versions),
        "parent_version": [v - 1 if v > 1 else None for v in versions],
        "created_at": [t for _, t, _ in rows],
        "status": [s for _, _, s in rows],
        "named_by_event": [False] * len(rows),
    }
    columns.update(extra)
    schema = {**VERSION_SCHEMA, **({"candidate": pl.String()} if "candidate" in extra else {})}
    return pl.LazyFrame(columns, schema=schema)


def test_each_rule_keeps_exactly_what_it_names() -> None:
    policy = RetentionPolicy(keep_last=2, hourly_hours=3, daily_days=3)
    rows = [
        (1, datetime(2024, 3, 1, 8), "retired"),  # older than every window
        (2, datetime(2024, 3, 1, 9), "retired"),  # promoted once: named by an event
        (3, datetime(2024, 3, 8, 10), "retired"),
        (4, datetime(2024, 3, 8, 23), "retired"),  # latest of 8 March
        (5, datetime(2024, 3, 10, 9, 10), "retired"),  # in the hourly window, not latest
        (6, datetime(2024, 3, 10, 9, 50), "retired"),  # latest of 9:00
        (7, datetime(2024, 3, 10, 10, 5), "candidate"),  # a backfill's candidate
        (8, datetime(2024, 3, 10, 11, 1), "retired"),  # parent of the champion
        (9, datetime(2024, 3, 10, 11, 2), "retired"),
        (10, datetime(2024, 3, 10, 11, 3), "retired"),  # latest of 11:00, and last 2
        (11, datetime(2024, 3, 10, 12, 0), "champion"),
    ]
    frame = _frame(rows, named_by_event=[v == 2 for v, _, _ in rows]).with_columns(
        parent_version=pl.when(pl.col("version") == 11).then(8).otherwise(pl.col("parent_version"))
    )
    reasons = dict(retention_reasons(frame, policy, NOW).collect().iter_rows())
    assert reasons == {
        1: None,
        2: "event",
        3: None,
        4: "daily",
        5: None,
        6: "hourly",
        7: "head",
        8: "rollback_target",
        9: None,
        10: "last",
        11: "head",
    }
    assert prunable_versions(frame, policy, NOW) == {1, 3, 5, 9}


def test_the_defaults_keep_about_130_files_of_a_month_at_a_5_s_cadence() -> None:
    start = NOW - timedelta(days=40)
    count = 40 * 24 * 60  # one a minute is enough to fill every bucket
    rows = [(v, start + timedelta(minutes=v), "retired") for v in range(1, count + 1)]
    rows[-1] = (count, rows[-1][1], "champion")
    policy = RetentionPolicy()
    kept = count - len(prunable_versions(_frame(rows), policy, rows[-1][1]))
    assert (policy.keep_last, policy.hourly_hours, policy.daily_days) == (50, 48, 30)
    # 50 last + 48 hours + 31 days (today's and the oldest partial day included), less overlaps
    assert 120 <= kept <= 130


def test_the_last_versions_are_counted_per_candidate_lineage() -> None:
    rows = [(v, NOW - timedelta(days=9, minutes=10 - v), "retired") for v in range(1, 9)]
    lineages = ["main", "fast"] * 4  # versions 1,3,5,7 continue main; 2,4,6,8 continue fast
    frame = _frame(rows, candidate=lineages)
    policy = RetentionPolicy(keep_last=1, hourly_hours=0, daily_days=0)
    assert prunable_versions(frame, policy, NOW) == {1, 2, 3, 4, 5, 6}
    # without the candidate column only the very last version is kept
    assert prunable_versions(frame.drop("candidate"), policy, NOW) == set(range(1, 8))


def test_a_policy_that_would_prune_everything_is_refused() -> None:
    with pytest.raises(ValueError, match="keep_last must be at least 1"):
        RetentionPolicy(keep_last=0)
    with pytest.raises(ValueError, match="hourly_hours and daily_days"):
        RetentionPolicy(hourly_hours=-1)


@st.composite
def _histories(draw: st.DrawFn) -> tuple[pl.LazyFrame, RetentionPolicy, datetime]:
    n = draw(st.integers(0, 80))
    gaps = draw(st.lists(st.integers(1, 36 * 3600), min_size=n, max_size=n))
    start = datetime(2024, 1, 1)
    created = [start + timedelta(seconds=sum(gaps[: i + 1])) for i in range(n)]
    statuses = draw(
        st.lists(
            st.sampled_from(["retired"] * 6 + ["candidate", "challenger"]), min_size=n, max_size=n
        )
    )
    if n and draw(st.booleans()):
        statuses[draw(st.integers(0, n - 1))] = "champion"
    events = draw(st.lists(st.sampled_from([False] * 5 + [True]), min_size=n, max_size=n))
    lineages = draw(st.lists(st.sampled_from(["main", "fast"]), min_size=n, max_size=n))
    frame = pl.LazyFrame(
        {
            "version": list(range(1, n + 1)),
            "parent_version": [
                draw(st.none() | st.integers(1, v)) if v else None for v in range(n)
            ],
            "created_at": created,
            "status": statuses,
            "named_by_event": events,
            "candidate": lineages,
        },
        schema={**VERSION_SCHEMA, "candidate": pl.String()},
    )
    policy = RetentionPolicy(
        keep_last=draw(st.integers(1, 10)),
        hourly_hours=draw(st.integers(0, 72)),
        daily_days=draw(st.integers(0, 40)),
    )
    now = (created[-1] if n else start) + timedelta(seconds=draw(st.integers(0, 10 * 86400)))
    return frame, policy, now


@settings(max_examples=60, deadline=None)
@given(_histories())
def test_heads_chosen_versions_and_the_last_k_are_never_pruned_and_pruning_is_idempotent(
    history: tuple[pl.LazyFrame, RetentionPolicy, datetime],
) -> None:
    frame, policy, now = history
    rows = frame.collect()
    pruned = prunable_versions(frame, policy, now)
    assert pruned <= set(rows["version"].to_list())
    protected = rows.filter(
        pl.col("status").is_in(["champion", "challenger", "candidate"]) | pl.col("named_by_event")
    )["version"].to_list()
    champion_parents = rows.filter(pl.col("status") == "champion")["parent_version"].to_list()
    last_k = [
        v
        for lineage in rows.partition_by("candidate")
        for v in lineage["version"].sort(descending=True).head(policy.keep_last).to_list()
    ]
    assert not pruned & {*protected, *champion_parents, *last_k}
    # deciding again on what is left prunes nothing more, now or later
    left = frame.filter(~pl.col("version").is_in(sorted(pruned)))
    assert prunable_versions(left, policy, now) == set()
    assert prunable_versions(frame, policy, now) == pruned
    later = prunable_versions(frame, policy, now + timedelta(hours=5))
    assert pruned <= later
