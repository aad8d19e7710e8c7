"""How commands print: tables, CSV or JSON on stdout, progress and messages on stderr."""

from __future__ import annotations

import csv
import json
import sys
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# Tables keep their columns when piped (rich would otherwise assume 80 columns).
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def cell(value: Any) -> Any:
    """A value as JSON and CSV show it (dates and times in ISO 8601)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def print_result(
    columns: list[str], rows: list[tuple[Any, ...]], fmt: Format, title: str | None = None
) -> None:
    """Rows as one JSON array of objects, CSV with a header, or a table."""
    if fmt is Format.json:
        sys.stdout.write(
            json.dumps([dict(zip(columns, map(cell, r), strict=True)) for r in rows], default=str)
            + "\n"
        )
    elif fmt is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[cell(v) for v in r] for r in rows])
    else:
        table = Table(title=title)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*["NULL" if v is None else str(cell(v)) for v in row])
        out.print(table)


def short(text: Any, width: int = 80) -> str:
    """`text` on one line, cut to `width` characters with an ellipsis."""
    flat = " ".join(str(text).split()) if text is not None else "NULL"
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def progress_bar(unit: str) -> Progress:
    """A transient bar on stderr: description, bar, done/total `unit`, time elapsed."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
