"""Drift detectors of an error stream: Page-Hinkley and ADWIN.

Every detector is a plain dataclass whose whole state lives in its fields, so it
pickles inside a model artifact and, once reloaded, continues exactly where it stopped.
Each `update` takes the next values of its stream in order and reports what it detected
in that call, with positions relative to the values it was given: how a stream is cut
into calls never changes what is detected or where.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def _stream(values: np.ndarray) -> list[float]:
    """`values` as a list of floats; raises ValueError unless it is 1-D and finite."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"drift detectors take a 1-D array of values, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("drift detectors take finite values; drop NaN/inf errors before update")
    return array.tolist()


@dataclass
class PageHinkley:
    """Page-Hinkley test for an increase in the mean of a stream (Page 1954, Hinkley 1971).

    With `mean` the mean of the values seen since the last reset, it tracks the
    cumulative deviation S = max(0, alpha * S + x - mean - delta) and signals a change when
    S > `threshold` once at least `min_instances` values have been seen; then it starts
    afresh (count, mean and S), as River does.

    With alpha = 1 this is exactly River's `drift.PageHinkley(mode="up")` and MOA's
    PageHinkleyDM (S - min S there equals S reflected at 0 here). With alpha < 1 they
    shrink S but not its minimum, so on a stationary stream S - min S creeps towards the
    threshold (with the defaults, about half of 20,000-value Bernoulli(0.2) streams alarm);
    reflecting S at 0, as Page's CUSUM and earlier River releases do, makes forgetting
    pull S towards "no change" instead.

    delta: magnitude of increase tolerated without alarm (default 0.005).
    threshold: lambda, the alarm level (default 50.0). On 0/1 errors at a steady 20% rate,
        about 1 in 9 streams of 20,000 values raises a false alarm with 50, none in 300
        with 100; a rise to 60% is caught about 110 values later with 50, 240 with 100.
    min_instances: values needed after a reset before any alarm (default 30).
    alpha: forgetting factor applied to S at each step (default 1 - 0.0001).
    """

    delta: float = 0.005
    threshold: float = 50.0
    min_instances: int = 30
    alpha: float = 1 - 0.0001
    n: int = field(default=0, init=False)
    mean: float = field(default=0.0, init=False)
    cumulative: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")

    def update(self, values: np.ndarray) -> list[int]:
        """Positions within `values` at which a change was detected (0-based)."""
        detected: list[int] = []
        # S is a clipped recursion, so a plain loop: about 0.15 ms per 500 values.
        for position, x in enumerate(_stream(values)):
            self.n += 1
            self.mean += (x - self.mean) / self.n
            self.cumulative = max(0.0, self.alpha * self.cumulative + x - self.mean - self.delta)
            if self.n >= self.min_instances and self.cumulative > self.threshold:
                detected.append(position)
                self.n, self.mean, self.cumulative = 0, 0.0, 0.0
        return detected


@dataclass
class Adwin:
    """ADWIN2 (Bifet & Gavaldà, SDM 2007): a window that drops its past when it changes.

    The window is summarised by an exponential histogram: level i holds buckets of
    2**i values (total and variance each), oldest first, at most `max_buckets` per level.
    Every `clock` insertions, every split of the window at a bucket boundary into an older
    part W0 (n0 values) and a newer part W1 (n1 values), both at least `min_window_length`
    long, is tested; when |mean(W0) - mean(W1)| > eps the oldest bucket is dropped and the
    test repeats. As in MOA, with n the window width and var its variance:

        1/m = 1/(n0 - min_window_length + 1) + 1/(n1 - min_window_length + 1)
        eps = sqrt(2/m * var * ln(2/delta')) + 2/(3m) * ln(2/delta'),  delta' = delta / ln(n)

    Defaults: delta 0.002, max_buckets 5, clock 32, min_window_length 5 (River and MOA).
    """

    delta: float = 0.002
    max_buckets: int = 5
    clock: int = 32
    min_window_length: int = 5
    # _totals[i][j], _variances[i][j]: sum and sum of squared deviations of bucket j at
    # level i (2**i values); j = 0 is the oldest.
    _totals: list[list[float]] = field(default_factory=lambda: [[]], init=False, repr=False)
    _variances: list[list[float]] = field(default_factory=lambda: [[]], init=False, repr=False)
    _width: int = field(default=0, init=False, repr=False)
    _total: float = field(default=0.0, init=False, repr=False)
    _squares: float = field(default=0.0, init=False, repr=False)
    _ticks: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.max_buckets < 1 or self.clock < 1 or self.min_window_length < 1:
            raise ValueError("max_buckets, clock and min_window_length must each be >= 1")

    @property
    def width(self) -> int:
        """Number of values in the current window."""
        return self._width

    @property
    def estimation(self) -> float:
        """Mean of the current window (0.0 when it is empty)."""
        return self._total / self._width if self._width else 0.0

    @property
    def variance(self) -> float:
        """Population variance of the current window (0.0 when it is empty)."""
        return max(self._squares / self._width, 0.0) if self._width else 0.0

    def update(self, values: np.ndarray) -> list[int]:
        """Positions within `values` whose insertion made the window drop its past."""
        detected: list[int] = []
        for position, x in enumerate(_stream(values)):
            self._insert(x)
            self._ticks += 1
            if self._ticks % self.clock == 0 and self._shrink():
                detected.append(position)
        return detected

    def _insert(self, x: float) -> None:
        if self._width:
            self._squares += self._width * (x - self._total / self._width) ** 2 / (self._width + 1)
        self._width += 1
        self._total += x
        self._totals[0].append(x)
        self._variances[0].append(0.0)
        level = 0
        while len(self._totals[level]) > self.max_buckets:
            if level + 1 == len(self._totals):
                self._totals.append([])
                self._variances.append([])
            totals, variances = self._totals[level], self._variances[level]
            # Two buckets of s values each: the merged variance gains (t0 - t1)^2 / (2s).
            merged = variances[0] + variances[1] + (totals[0] - totals[1]) ** 2 / 2 ** (level + 1)
            self._totals[level + 1].append(totals[0] + totals[1])
            self._variances[level + 1].append(merged)
            del totals[:2], variances[:2]
            level += 1

    def _shrink(self) -> bool:
        """Drop oldest buckets while some split shows a change; True if any were dropped."""
        dropped = False
        while self._width >= 2 * self.min_window_length and self._has_cut():
            self._drop_oldest()
            dropped = True
        return dropped

    def _has_cut(self) -> bool:
        n = self._width
        log_term = math.log(2 * math.log(n) / self.delta)
        variance = self.variance
        offset = self.min_window_length - 1
        n0, u0, n1, u1 = 0, 0.0, n, self._total
        for level in range(len(self._totals) - 1, -1, -1):
            size = 2**level
            for total in self._totals[level]:
                n0 += size
                n1 -= size
                u0 += total
                u1 -= total
                if n1 == 0:
                    return False
                if n0 < self.min_window_length or n1 < self.min_window_length:
                    continue
                m_inverse = 1 / (n0 - offset) + 1 / (n1 - offset)
                epsilon = (
                    math.sqrt(2 * m_inverse * variance * log_term) + 2 / 3 * m_inverse * log_term
                )
                if abs(u0 / n0 - u1 / n1) > epsilon:
                    return True
        return False

    def _drop_oldest(self) -> None:
        level = len(self._totals) - 1
        size = 2**level
        total = self._totals[level].pop(0)
        variance = self._variances[level].pop(0)
        self._width -= size
        self._total -= total
        if self._width:
            gap = total / size - self._total / self._width
            self._squares -= variance + size * self._width * gap**2 / (size + self._width)
        else:
            self._total, self._squares = 0.0, 0.0
        # With max_buckets 1 a merge can empty a middle level: trim all empty tops.
        while len(self._totals) > 1 and not self._totals[-1]:
            self._totals.pop()
            self._variances.pop()
