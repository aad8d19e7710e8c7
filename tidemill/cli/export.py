"""`tidemill export`: a pipeline's rows as Parquet for other engines."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from tidemill.cli import session
from tidemill.cli.backfill import moment
from tidemill.cli.output import out
from tidemill.errors import TidemillError


class Table(StrEnum):
    raw = "raw"
    clean = "clean"
    predictions = "predictions"
    metrics = "metrics"


def export(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    table: Annotated[
        Table,
        typer.Option(
            "--table",
            help="raw (stored records), clean (model inputs), predictions, or metrics "
            "(prequential, per batch).",
        ),
    ],
    since: Annotated[
        str, typer.Option("--since", help="From this event time, inclusive: ISO date/time (UTC).")
    ],
    until: Annotated[str, typer.Option("--until", help="To this event time, exclusive.")],
    to: Annotated[
        Path,
        typer.Option(
            "--to", help="Folder to write (event_date=YYYY-MM-DD/ partitions).", file_okay=False
        ),
    ],
    plaintext: Annotated[
        bool,
        typer.Option("--plaintext", help="Write unencrypted Parquet (default: encrypted)."),
    ] = False,
) -> None:
    """Write PIPELINE's TABLE rows with event time in [since, until) as Parquet files
    partitioned by event date, for Spark, pandas, DuckDB or any Parquet reader.

    Files are encrypted (Parquet modular encryption, AES-GCM) with the state folder's
    encryption key (TIDEMILL_ENCRYPTION_KEY, or keys/encryption.key) unless --plaintext:
    see the folder's _tidemill_export.json for how to read them. Reads the owner live while
    it runs, else the file.
    """
    from tidemill.cli.access import stream_sql
    from tidemill.keys import get_token
    from tidemill.warehouse.export import export_sql, parquet_key, write_parquet

    start, end = moment(since, "--since"), moment(until, "--until")
    if end <= start:
        raise TidemillError(f"--until {until} is not after --since {since}")
    if to.exists() and any(to.iterdir()):
        raise TidemillError(f"{to} is not empty: export into a new or empty folder")
    owner = session.owner(pipeline)
    sql = export_sql(owner.pipeline(pipeline), table.value, start, end)
    key = None if plaintext else parquet_key(get_token(owner.state_dir, "encryption"))
    with stream_sql(owner.state_dir, sql) as rows:
        done = write_parquet(
            rows,
            to,
            key=key,
            describe={
                "pipeline": pipeline,
                "table": table.value,
                "since": str(start),
                "until": str(end),
            },
        )
    how = "encrypted" if done.encrypted else "plaintext"
    out.print(f"wrote {done.rows:,} rows in {done.files} {how} Parquet files under {done.folder}")
