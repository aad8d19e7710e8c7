"""Champion/challenger: rolling prequential scores per candidate and the promotion rule.

Every candidate scores every batch before learning it, so all of them are judged on
the same rows they had not seen. A :class:`ScoreWindow` keeps, per candidate, the
(batch, rows, metric x rows) of its latest batches; :func:`decide` compares each
challenger with the champion over the batches both scored and names the challenger to
promote, with the evidence, when its lead is at least the margin AND clear of the noise:
the per-batch differences are paired (same rows), and the lead must exceed `Z` standard
errors of their rows-weighted mean. Without that test two close models trade places on
every lucky window (measured on flights: 7 swaps in 80 batches, served accuracy below
either model's).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from tidemill.tasks.learn.metrics import LOWER_IS_BETTER

Z = 2.0  # standard errors the lead must clear (about 95 % one-sided... and then some)
MIN_BATCHES = 3  # fewer paired batches give no usable standard error


@dataclass
class ScoreWindow:
    """The latest batches one candidate scored, holding at least `rows` rows."""

    rows: int
    batches: deque[tuple[int, int, float]] = field(default_factory=deque)  # id, n, n x value

    def add(self, batch_id: int, n: int, value: float) -> None:
        """Record the candidate's metric `value` over `n` rows of `batch_id`; drop batches
        that are no longer needed to cover `rows` rows."""
        if n <= 0:
            return
        self.batches.append((batch_id, n, n * value))
        while len(self.batches) > 1 and self.total - self.batches[0][1] >= self.rows:
            self.batches.popleft()

    @property
    def total(self) -> int:
        """Rows covered."""
        return sum(n for _, n, _ in self.batches)

    def over(self, batch_ids: set[int]) -> tuple[int, float]:
        """(rows, mean metric) over the batches among `batch_ids`."""
        n = sum(b[1] for b in self.batches if b[0] in batch_ids)
        total = sum(b[2] for b in self.batches if b[0] in batch_ids)
        return n, (total / n if n else float("nan"))

    def per_batch(self, batch_ids: set[int]) -> dict[int, tuple[int, float]]:
        """batch -> (rows, metric) for the batches among `batch_ids`."""
        return {b: (n, total / n) for b, n, total in self.batches if b in batch_ids}


def paired_standard_error(
    challenger: dict[int, tuple[int, float]], champion: dict[int, tuple[int, float]]
) -> float:
    """Standard error of the rows-weighted mean of the per-batch metric differences."""
    weights = [challenger[b][0] for b in challenger]
    diffs = [challenger[b][1] - champion[b][1] for b in challenger]
    total = sum(weights)
    mean = sum(w * d for w, d in zip(weights, diffs, strict=True)) / total
    spread = sum(w * w * (d - mean) ** 2 for w, d in zip(weights, diffs, strict=True))
    k = len(diffs)
    return math.sqrt(spread * k / (k - 1)) / total


@dataclass(frozen=True)
class Decision:
    """A challenger that earned the champion's place, and why."""

    candidate: str
    reason: str
    evidence: dict[str, object]


def decide(
    champion: str,
    windows: dict[str, ScoreWindow],
    *,
    metric: str,
    min_rows: int,
    margin: float,
) -> Decision | None:
    """The challenger with the largest lead of at least `margin` over the champion on the
    batches both scored (at least `min_rows` rows and MIN_BATCHES batches), clear of the
    noise by Z standard errors of the paired per-batch differences; or None."""
    if champion not in windows:
        return None
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    best: Decision | None = None
    best_lead = margin
    champion_batches = {b[0] for b in windows[champion].batches}
    for name, window in sorted(windows.items()):
        if name == champion:
            continue
        common = champion_batches & {b[0] for b in window.batches}
        rows, value = window.over(common)
        _, incumbent = windows[champion].over(common)
        if rows < min_rows or len(common) < MIN_BATCHES:
            continue
        lead = sign * (value - incumbent)
        error = paired_standard_error(window.per_batch(common), windows[champion].per_batch(common))
        if lead >= best_lead and lead > Z * error:
            best_lead = lead
            best = Decision(
                candidate=name,
                reason=f"{name} {metric} {value:.4f} vs champion {champion} {incumbent:.4f} "
                f"over the same {rows} rows (margin {margin}, lead {lead / error if error else float('inf'):.1f} "
                "standard errors)",
                evidence={
                    "metric": metric,
                    "rows": rows,
                    "batches": sorted(common),
                    "challenger": name,
                    "challenger_value": value,
                    "champion": champion,
                    "champion_value": incumbent,
                    "margin": margin,
                    "standard_error": error,
                },
            )
    return best
