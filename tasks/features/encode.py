"""Rows -> a numeric matrix, with state that learns online and never looks ahead.

`FeatureEncoder` keeps, per numeric column, a running count/mean/M2 merged with Chan's
parallel formula (stable in float64 on endless streams, unlike summing squares), and
per categorical column a vocabulary in order of first appearance capped at
`max_categories` (later newcomers share one "other" slot) — or, with `hash_buckets`,
no vocabulary at all: each value lands in slot md5(value) mod hash_buckets, which
handles any cardinality and any unseen value. Missing values are imputed: a numeric
null sits at the running mean (0 after scaling), a categorical null sets no slot. The
matrix width is fixed at construction, so a linear model's coefficients keep their
shape forever.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

OTHER = "\x00other"


@dataclass
class RunningMoments:
    """Count, mean and sum of squared deviations of one column, mergeable batch by batch."""

    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0

    def merge(self, values: np.ndarray) -> None:
        """Fold the finite values of `values` in (Chan et al. 1979)."""
        finite = values[np.isfinite(values)]
        n = float(finite.size)
        if n == 0:
            return
        batch_mean = float(finite.mean())
        batch_m2 = float(((finite - batch_mean) ** 2).sum())
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        """Population standard deviation; 1.0 until there is spread to measure."""
        if self.count < 2:
            return 1.0
        value = math.sqrt(self.m2 / self.count)
        return value if value > 1e-12 else 1.0


@dataclass
class FeatureEncoder:
    """Online encoder for a fixed list of numeric and categorical columns."""

    numeric: list[str]
    categorical: list[str]
    max_categories: int
    cyclic: dict[str, int] = field(default_factory=dict)  # column -> period (hour: 24)
    moments: dict[str, RunningMoments] = field(default_factory=dict)
    vocab: dict[str, dict[str, int]] = field(default_factory=dict)
    hash_buckets: int = 0  # > 0: hash categories instead of keeping a vocabulary

    def __post_init__(self) -> None:
        for name in self.numeric:
            self.moments.setdefault(name, RunningMoments())
        for name in self.categorical:
            self.vocab.setdefault(name, {})

    @property
    def feature_names(self) -> list[str]:
        """Names of the matrix columns, in order."""
        names = list(self.numeric)
        for name, period in self.cyclic.items():
            del period
            names += [f"{name}_sin", f"{name}_cos"]
        for name in self.categorical:
            if self.hash_buckets:
                names += [f"{name}#{i}" for i in range(self.hash_buckets)]
            else:
                names += [f"{name}={i}" for i in range(self.max_categories)] + [f"{name}=other"]
        return names

    def update(self, frame: pl.DataFrame) -> None:
        """Learn scaling moments and new categories from `frame` (no labels are used)."""
        if self.numeric:
            values = _floats(frame, self.numeric)
            for i, name in enumerate(self.numeric):
                self.moments[name].merge(values[:, i])
        for name in self.categorical if not self.hash_buckets else []:
            vocab = self.vocab[name]
            for value in frame[name].drop_nulls().unique(maintain_order=True).to_list():
                if value not in vocab and len(vocab) < self.max_categories:
                    vocab[value] = len(vocab)

    def transform(self, frame: pl.DataFrame) -> np.ndarray:
        """The float64 matrix of `frame`: scaled numerics (nulls at the mean, i.e. 0),
        sin/cos of cyclic columns, one-hot categories. One Polars query, then numpy."""
        n = frame.height
        blocks: list[np.ndarray] = []
        if self.numeric:
            means = np.array([self.moments[c].mean for c in self.numeric])
            stds = np.array([self.moments[c].std for c in self.numeric])
            scaled = (_floats(frame, self.numeric) - means) / stds
            blocks.append(np.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0))
        if self.cyclic:
            periods = np.array(list(self.cyclic.values()), dtype=np.float64)
            angles = np.nan_to_num(_floats(frame, list(self.cyclic)), nan=0.0) * (
                2 * math.pi / periods
            )
            for i in range(len(periods)):
                blocks.append(np.column_stack([np.sin(angles[:, i]), np.cos(angles[:, i])]))
        if self.categorical:
            widths, codes = self._codes(frame)
            for i, width in enumerate(widths):
                onehot = np.zeros((n, width))
                present = codes[:, i] >= 0
                onehot[np.nonzero(present)[0], codes[present, i]] = 1.0
                blocks.append(onehot)
        return np.hstack(blocks) if blocks else np.zeros((n, 0))

    def _codes(self, frame: pl.DataFrame) -> tuple[list[int], np.ndarray]:
        """Per categorical column its width and each row's slot (-1 for null)."""
        widths, exprs = [], []
        for name in self.categorical:
            column = pl.col(name).cast(pl.Utf8)
            if self.hash_buckets:
                seen: list[str] = frame[name].cast(pl.Utf8).drop_nulls().unique().to_list()
                slots = [_bucket(v, self.hash_buckets) for v in seen]
                width, default = self.hash_buckets, 0
            else:
                seen, slots = list(self.vocab[name]), list(self.vocab[name].values())
                width, default = self.max_categories + 1, self.max_categories
            widths.append(width)
            exprs.append(
                pl.when(column.is_null())
                .then(-1)
                .otherwise(
                    column.replace_strict(seen, slots, default=default, return_dtype=pl.Int64)
                )
                .alias(name)
            )
        codes = frame.select(exprs).to_numpy().astype(np.int64)
        return widths, codes.reshape(frame.height, len(exprs))


def _floats(frame: pl.DataFrame, columns: list[str]) -> np.ndarray:
    """(rows, columns) float64 matrix of `columns`, nulls as NaN, in one query."""
    selected = frame.select(pl.col(c).cast(pl.Float64) for c in columns)
    return selected.to_numpy().astype(np.float64).reshape(frame.height, len(columns))


def _bucket(value: str, buckets: int) -> int:
    """Stable slot of a category (md5, so it is the same in every process and version)."""
    return int.from_bytes(hashlib.md5(value.encode()).digest()[:8], "little") % buckets
