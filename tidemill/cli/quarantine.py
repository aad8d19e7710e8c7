"""`tidemill quarantine …`: read quarantined records and put corrected ones back."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tidemill.cli import session
from tidemill.cli.access import command, read_sql
from tidemill.cli.output import cell, out, short
from tidemill.errors import TidemillError


def _read(state_dir: Path, sql: str) -> list[dict[str, Any]]:

    result, _ = read_sql(state_dir, sql)
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def quarantine_list(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    reason: Annotated[
        str | None, typer.Option("--reason", help="Only records whose reason contains TEXT.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Recent records to show.")] = 20,
    include_readmitted: Annotated[
        bool, typer.Option("--all", help="Include records already re-admitted.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Quarantined records of PIPELINE: counts by kind of reason and file, then the most
    recent records with their ids (for `show` and `readmit`)."""
    from tidemill.warehouse.quarantine import groups_sql, recent_sql, totals_sql

    state_dir = session.owner(pipeline).state_dir
    totals = _read(state_dir, totals_sql(pipeline))[0]
    groups = _read(state_dir, groups_sql(pipeline, reason, include_readmitted))
    recent = _read(state_dir, recent_sql(pipeline, reason, limit, include_readmitted))
    if as_json:
        report = {"pipeline": pipeline, **totals, "groups": groups, "recent": recent}
        sys.stdout.write(json.dumps(report, default=cell) + "\n")
        return
    open_rows = totals["quarantined"] - totals["readmitted"]
    out.print(
        f"{pipeline}: {open_rows} quarantined records waiting, {totals['readmitted']} re-admitted"
    )
    table = Table(title="by reason and file")
    for column in ("reason", "file", "rows", "re-admitted", "last"):
        table.add_column(column, overflow="fold")
    for group in groups:
        table.add_row(
            group["reason"],
            Path(group["file"]).name,
            str(group["rows"]),
            str(group["readmitted"]),
            str(cell(group["last_at"]))[:19],
        )
    out.print(table)
    table = Table(title=f"latest {len(recent)} (tidemill quarantine show {pipeline} ID)")
    for column in ("id", "batch", "file", "line", "reason", "raw text", "re-admitted"):
        table.add_column(column, overflow="fold")
    for row in recent:
        table.add_row(
            str(row["id"]),
            str(row["batch_id"]),
            Path(row["file"]).name,
            str(row["line"]),
            short(row["reason"]),
            short(row["raw_text"], 60),
            str(cell(row["readmitted_at"]))[:19] if row["readmitted_at"] else "-",
        )
    out.print(table)


def quarantine_show(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    quarantine_id: Annotated[int, typer.Argument(metavar="ID", help="Quarantine row id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One quarantined record: its file and line, every reason, its raw text, the fields
    it splits into, and whether it was re-admitted."""
    from tidemill.tasks.records.parse import record_fields
    from tidemill.tasks.sources.loader import source_for
    from tidemill.warehouse.quarantine import record_sql

    owner = session.owner(pipeline)
    spec = owner.pipeline(pipeline)
    rows = _read(owner.state_dir, record_sql(pipeline, quarantine_id))
    if not rows:
        raise TidemillError(
            f"{pipeline} has no quarantined record {quarantine_id} "
            f"(see `tidemill quarantine list {pipeline}`)"
        )
    record = rows[0]
    header = str(record.pop("header") or "").split(",")
    fmt = source_for(spec, owner.state_dir).record_format
    required = [c for c in (spec.key, spec.event_time, *(spec.features or []), spec.target) if c]
    try:
        fields: dict[str, Any] = record_fields(str(record["raw_text"]), fmt, header, required)
    except ValueError as error:
        fields = {"(does not split into fields)": str(error)}
    record["reasons"] = str(record.pop("reason")).split("; ")
    record["fields"] = fields
    if as_json:
        sys.stdout.write(json.dumps(record, default=cell) + "\n")
        return
    table = Table(title=f"{pipeline} quarantine {quarantine_id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key in ("batch_id", "file", "line", "quarantined_at"):
        table.add_row(key, str(cell(record[key])))
    for number, text in enumerate(record["reasons"], start=1):
        table.add_row(f"reason {number}", text)
    table.add_row("raw text", str(record["raw_text"]))
    for name, value in fields.items():
        table.add_row(f"  {name}", "NULL" if value is None else repr(value))
    if record["readmitted_at"]:
        changed = record["columns_changed"] or "nothing changed"
        table.add_row(
            "re-admitted",
            f"{cell(record['readmitted_at'])} by {record['readmitted_by']} ({changed})",
        )
    else:
        table.add_row("re-admitted", f"no: tidemill quarantine readmit {pipeline} {quarantine_id}")
    out.print(table)


def _changes(assignments: list[str]) -> dict[str, str | None]:
    changes: dict[str, str | None] = {}
    for assignment in assignments:
        column, sep, value = assignment.partition("=")
        if not sep or not column.strip():
            raise TidemillError(f"--set expects COLUMN=VALUE (got {assignment!r})")
        changes[column.strip()] = value or None
    return changes


def _fixes_from_file(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "quarantine_id" not in reader.fieldnames:
                raise TidemillError(
                    f"{path}: needs a quarantine_id column naming the record each line corrects"
                )
            fixes = []
            for number, row in enumerate(reader, start=2):
                try:
                    quarantine_id = int(row.pop("quarantine_id") or "")
                except ValueError:
                    raise TidemillError(f"{path}:{number}: quarantine_id is not a number") from None
                fixes.append(
                    {"id": quarantine_id, "changes": {k: v or None for k, v in row.items()}}
                )
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise TidemillError(f"{path}: {error}") from None
    return fixes


def _parts(fixes: list[dict[str, Any]], limit: int = 256 << 10) -> list[list[dict[str, Any]]]:
    parts: list[list[dict[str, Any]]] = [[]]
    size = 0
    for fix in fixes:
        length = len(json.dumps(fix))
        if parts[-1] and size + length > limit:
            parts.append([])
            size = 0
        parts[-1].append(fix)
        size += length
    return parts


def quarantine_readmit(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    ids: Annotated[
        list[int] | None, typer.Argument(metavar="[ID]...", help="Quarantine row ids.")
    ] = None,
    assignments: Annotated[
        list[str] | None,
        typer.Option(
            "--set", metavar="COLUMN=VALUE", help="Corrected value (repeatable; empty: NULL)."
        ),
    ] = None,
    fixed: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="CSV of corrected records: a quarantine_id column and the corrected columns.",
        ),
    ] = None,
) -> None:
    """Put quarantined records, corrected, back into PIPELINE's inbox.

    The next batch validates them in full, like any record read from a landing file; a
    record that would be quarantined again right now is refused with the reason, and
    then nothing is re-admitted. Each record is marked re-admitted (when, by whom) in the
    same transaction, so running this twice adds nothing.
    """

    config = session.owner(pipeline)
    if fixed is not None and ids:
        raise TidemillError("give quarantine ids or --file, not both")
    if fixed is not None:
        if assignments:
            raise TidemillError("--set applies to ids; with --file, put the values in the file")
        fixes = _fixes_from_file(fixed)
    elif ids:
        changes = _changes(assignments or [])
        fixes = [{"id": i, "changes": changes} for i in ids]
    else:
        raise TidemillError(
            f"name the records: tidemill quarantine readmit {pipeline} ID [--set COLUMN=VALUE] "
            "or --file fixed.csv"
        )
    if not fixes:
        raise TidemillError(f"{fixed}: holds no records")
    done: dict[str, list[Any]] = {"readmitted": [], "already": []}
    for part in _parts(fixes):  # an owner takes requests up to 1 MiB; each part is atomic
        reply = command(config, "readmit", pipeline=pipeline, fixes=part, actor=session.actor())
        done["readmitted"] += reply["readmitted"]
        done["already"] += reply["already"]
    if done["readmitted"]:
        listed = ", ".join(map(str, done["readmitted"]))
        out.print(
            f"{pipeline}: {len(done['readmitted'])} record(s) back in the inbox (ids {listed}); "
            "the next batch validates them"
        )
    for quarantine_id, at, by in done["already"]:
        out.print(
            f"{pipeline}: id {quarantine_id} was re-admitted at {at[:19]} by {by}; nothing added"
        )
