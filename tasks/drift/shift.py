"""Drift of the inputs: the Population Stability Index of each numeric feature, window by
window, against a reference window (see `FeatureShift`).

Like the error detectors, its whole state lives in its fields, so it pickles inside a
model artifact and continues where it stopped once reloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PSI_ALERT = 0.25
"""PSI above which a feature has shifted significantly.

The usual rule of thumb: PSI < 0.1 is stable, 0.1–0.25 a moderate shift worth watching,
> 0.25 a significant shift (the model sees inputs unlike those it learned from).
"""

PSI_FLOOR = 1e-4
"""Smallest proportion used in PSI: an empty bin counts as 1e-4 so the log stays finite."""


def _bin_counts(values: np.ndarray, inner_edges: np.ndarray) -> np.ndarray:
    """Counts per bin, the last entry being the missing bin (NaN, None, ±inf)."""
    finite = np.isfinite(values)
    bins = np.searchsorted(inner_edges, values[finite], side="right")
    counts = np.bincount(bins, minlength=inner_edges.size + 1)
    return np.append(counts, values.size - finite.sum()).astype(np.int64)


def _psi(reference: np.ndarray, current: np.ndarray) -> float:
    """PSI of proportions `current` against `reference`, both floored at PSI_FLOOR."""
    p_ref = np.maximum(reference, PSI_FLOOR)
    p_cur = np.maximum(current, PSI_FLOOR)
    return float(np.sum((p_cur - p_ref) * np.log(p_cur / p_ref)))


@dataclass(eq=False)  # fields hold numpy arrays, which have no boolean ==
class FeatureShift:
    """Population Stability Index of each numeric feature, one value per window of rows.

    The first `reference_rows` rows fix, per feature, the bin edges (the 0, 1/bins, ...,
    1 quantiles of its finite reference values, deduplicated, so a constant feature has
    one bin) and the reference proportions. Values below the lowest edge go to the first
    bin, above the highest to the last, and bins are closed on the left (a value on an
    edge counts in the bin above it); NaN, None and ±inf go to a separate missing bin.
    Every following `window_rows` rows form a window whose PSI against the reference is

        PSI = sum over bins of (p_cur - p_ref) * ln(p_cur / p_ref)

    with each proportion floored at PSI_FLOOR (1e-4) so empty bins stay finite.
    Compare the result with PSI_ALERT.
    """

    features: list[str]
    bins: int = 10
    reference_rows: int = 2000
    window_rows: int = 2000
    _reference: dict[str, list[np.ndarray]] = field(default_factory=dict, init=False, repr=False)
    _reference_seen: int = field(default=0, init=False, repr=False)
    _inner_edges: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _reference_p: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _window: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _window_seen: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.features:
            raise ValueError("FeatureShift needs at least one feature name")
        if self.bins < 1 or self.reference_rows < 1 or self.window_rows < 1:
            raise ValueError("bins, reference_rows and window_rows must each be >= 1")
        self._reference = {name: [] for name in self.features}

    def update(self, columns: dict[str, np.ndarray]) -> list[dict[str, float]]:
        """Feature -> PSI for each window completed by these rows, oldest first.

        `columns` maps every feature name to its values for the same rows, in order.
        """
        missing = [name for name in self.features if name not in columns]
        if missing:
            raise ValueError(f"FeatureShift.update lacks columns {missing}")
        data = {name: np.asarray(columns[name], dtype=np.float64) for name in self.features}
        lengths = {name: values.shape for name, values in data.items()}
        if len(set(lengths.values())) != 1 or any(len(s) != 1 for s in lengths.values()):
            raise ValueError(f"FeatureShift.update needs 1-D columns of equal length: {lengths}")
        rows = lengths[self.features[0]][0]
        start = 0
        if self._reference_seen < self.reference_rows:
            start = min(rows, self.reference_rows - self._reference_seen)
            for name in self.features:
                self._reference[name].append(data[name][:start])
            self._reference_seen += start
            if self._reference_seen == self.reference_rows:
                self._fix_reference()
        completed: list[dict[str, float]] = []
        while start < rows:
            stop = min(rows, start + self.window_rows - self._window_seen)
            for name in self.features:
                self._window[name] += _bin_counts(data[name][start:stop], self._inner_edges[name])
            self._window_seen += stop - start
            start = stop
            if self._window_seen == self.window_rows:
                completed.append(
                    {
                        name: _psi(self._reference_p[name], self._window[name] / self.window_rows)
                        for name in self.features
                    }
                )
                self._window = {name: np.zeros_like(c) for name, c in self._window.items()}
                self._window_seen = 0
        return completed

    def _fix_reference(self) -> None:
        for name in self.features:
            values = np.concatenate(self._reference[name])
            finite = values[np.isfinite(values)]
            if finite.size:
                edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, self.bins + 1)))
            else:
                edges = np.empty(0)
            self._inner_edges[name] = edges[1:-1]
            counts = _bin_counts(values, self._inner_edges[name])
            self._reference_p[name] = counts / values.size
            self._window[name] = np.zeros_like(counts)
        self._reference = {}
