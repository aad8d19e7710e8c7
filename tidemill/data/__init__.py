"""Data sets packaged with tidemill: the 2013 NYC flights (`flights.parquet`, CC0, see
ATTRIBUTION.md), replayed by the demo and read by tests and benchmarks."""

from __future__ import annotations

from importlib.resources import as_file, files

import polars as pl


def load_flights() -> pl.DataFrame:
    """Return the packaged ``tidemill/data/flights.parquet`` (336,776 flights, 12 columns)."""
    with as_file(files("tidemill.data").joinpath("flights.parquet")) as path:
        return pl.read_parquet(path)
