"""Champion/challenger: rolling prequential scores per candidate and the promotion rule.

Every candidate scores every batch before learning it, so all of them are judged on
the same rows they had not seen. A :class:`ScoreWindow` keeps, per candidate, the
(batch, rows, metric x rows) of its latest batches; :func:`decide` compares each
challenger with the champion over the batches both scored and names the challenger to
promote, with the evidence, when its lead is at least the margin.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from tasks.metrics import LOWER_IS_BETTER


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
    batches both scored (at least `min_rows` rows), or None."""
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
        if rows < min_rows:
            continue
        lead = sign * (value - incumbent)
        if lead >= best_lead:
            best_lead = lead
            best = Decision(
                candidate=name,
                reason=f"{name} {metric} {value:.4f} vs champion {champion} {incumbent:.4f} "
                f"over the same {rows} rows (margin {margin})",
                evidence={
                    "metric": metric,
                    "rows": rows,
                    "batches": sorted(common),
                    "challenger": name,
                    "challenger_value": value,
                    "champion": champion,
                    "champion_value": incumbent,
                    "margin": margin,
                },
            )
    return best
