"""Adaptive batch size: how many records the next batch of a pipeline takes
(`adaptive_batch` in the config), from how long this one took against the cadence."""

from __future__ import annotations


def next_batch_rows(
    current: int,
    *,
    seconds: float,
    every_seconds: float,
    backlog: int,
    min_rows: int,
    max_rows: int,
    target_fraction: float,
) -> int:
    """The next batch's size: half when this one took more than `target_fraction` of the
    cadence, double when it took less than a quarter of that and more records wait than
    it took, else unchanged; always within [min_rows, max_rows]."""
    if seconds > target_fraction * every_seconds:
        proposed = current // 2
    elif seconds < target_fraction * every_seconds / 4 and backlog > current:
        proposed = current * 2
    else:
        proposed = current
    return max(min_rows, min(max_rows, proposed))
