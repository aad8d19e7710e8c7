"""Quarantined records: what a person reads of them, and putting corrected ones back.

`tidemill quarantine list/show` run the read-only SQL built here wherever reads run
(the owner's socket, the file, the snapshot). `readmit` runs in the owner: a corrected
record goes back into the inbox, exactly like a record read from a landing file, and the
next batch validates it in full (keys, event times, types, classes) — nothing bypasses
that. The inbox row and the `_readmissions` row that marks the quarantined record as
re-admitted commit in ONE transaction, so re-admitting a record twice adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import polars as pl

from tidemill.config.pipeline import PipelineConfig
from tidemill.errors import TidemillError
from tidemill.tasks.records.parse import amend_record
from tidemill.tasks.records.validate import RecordSchema, parse_timestamp, validate_records
from tidemill.warehouse.frames import insert_frame
from tidemill.warehouse.inbox import headers
from tidemill.warehouse.ledger.batches import known_keys
from tidemill.warehouse.pipeline_tables import PipelineTables
from tidemill.warehouse.quoting import lit
from tidemill.warehouse.transaction import transaction

# Reasons name the offending values ("x 'abc' is not a finite number"); grouping by
# reason groups by the check instead, with values and the moving time horizon elided.
_REASON_KIND = (
    "regexp_replace(regexp_replace(regexp_replace(q.reason, '''[^'']*''', '''…''', 'g'), "
    r"'\d{4}-\d{2}-\d{2}T[0-9:]+', '…', 'g'), '\(\d+ bytes\)', '(… bytes)', 'g')"
)
_TEXT_NOT_KEPT = "line longer than"  # its raw_text is a preview, not the record


def _rows(pipeline: str, reason: str | None, include_readmitted: bool, *also: str) -> str:
    """FROM/WHERE of a pipeline's quarantined records joined to their re-admission."""
    t = PipelineTables(pipeline)
    where = list(also)
    if not include_readmitted:
        where.append("r.quarantine_id IS NULL")
    if reason:
        where.append(f"contains(lower(q.reason), lower({lit(reason)}))")
    return (
        f"FROM {t.quarantine} q LEFT JOIN _readmissions r "
        f"ON r.pipeline = {lit(pipeline)} AND r.quarantine_id = q.quarantine_id"
        + (f" WHERE {' AND '.join(where)}" if where else "")
    )


def groups_sql(pipeline: str, reason: str | None = None, include_readmitted: bool = False) -> str:
    """Quarantined records counted by kind of reason and file, most first."""
    return (
        f"SELECT {_REASON_KIND} AS reason, q._file AS file, count(*) AS rows, "
        f"count(r.quarantine_id) AS readmitted, max(q.quarantined_at) AS last_at "
        f"{_rows(pipeline, reason, include_readmitted)} GROUP BY 1, 2 ORDER BY rows DESC, 1, 2"
    )


def totals_sql(pipeline: str) -> str:
    """Records quarantined and, of them, re-admitted."""
    return "SELECT count(*) AS quarantined, count(r.quarantine_id) AS readmitted " + _rows(
        pipeline, None, True
    )


def recent_sql(
    pipeline: str, reason: str | None = None, limit: int = 20, include_readmitted: bool = False
) -> str:
    """The latest quarantined records, newest first."""
    return (
        "SELECT q.quarantine_id AS id, q.batch_id, q._file AS file, q._line AS line, q.reason, "
        "q.raw_text, q.quarantined_at, r.readmitted_at "
        f"{_rows(pipeline, reason, include_readmitted)} "
        f"ORDER BY q.quarantine_id DESC LIMIT {int(limit)}"
    )


def record_sql(pipeline: str, quarantine_id: int) -> str:
    """One quarantined record, its file's CSV header and its re-admission, if any."""
    return (
        "SELECT q.quarantine_id AS id, q.batch_id, q._file AS file, q._line AS line, q.reason, "
        "q.raw_text, q.quarantined_at, r.readmitted_at, r.readmitted_by, r.columns_changed, "
        "(SELECT arg_min(f.header, f.ingested_at) FROM _files f "
        f"WHERE f.pipeline = {lit(pipeline)} AND f.path = q._file) AS header "
        + _rows(pipeline, None, True, f"q.quarantine_id = {int(quarantine_id)}")
    )


class ReadmitRefused(TidemillError, ValueError):
    """Nothing was re-admitted; the message says why and what would work."""


@dataclass(frozen=True)
class Fix:
    """A quarantined record to re-admit, with corrected values (column -> text; None
    for empty) for any of the pipeline's declared columns."""

    quarantine_id: int
    changes: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Readmission:
    """What one `readmit` did."""

    readmitted: list[int]
    already: list[tuple[int, str, str]]  # (id, readmitted_at, readmitted_by)


def readmit(
    con: duckdb.DuckDBPyConnection,
    config: PipelineConfig,
    fmt: str,
    fixes: list[Fix],
    *,
    actor: str,
    now: datetime,
) -> Readmission:
    """Put the corrected records of `fixes` back into the inbox, all or none.

    `fmt` is how the pipeline's raw text reads (csv, else JSON objects). Records already
    re-admitted are left alone (reported in `already`). Raises ReadmitRefused, having
    written nothing, when a record cannot be rebuilt or would be rejected again now.
    """
    t = PipelineTables(config.name)
    ids = [f.quarantine_id for f in fixes]
    if len(set(ids)) != len(ids):
        raise ReadmitRefused("a quarantine row is given twice")
    required = config.source_columns
    unknown = sorted({c for f in fixes for c in f.changes if c not in required})
    if unknown:
        raise ReadmitRefused(
            f"{config.name} has no column(s) {', '.join(unknown)} (columns: {', '.join(required)})"
        )
    con.register("_ids", pl.DataFrame({"id": ids}, schema={"id": pl.Int64}).to_arrow())
    try:
        stored = {
            row[0]: row[1:]
            for row in con.execute(
                f"SELECT quarantine_id, _file, _line, raw_text, reason FROM {t.quarantine} "
                "WHERE quarantine_id IN (SELECT id FROM _ids)"
            ).fetchall()
        }
        done = {
            row[0]: (row[0], str(row[1]), row[2])
            for row in con.execute(
                "SELECT quarantine_id, readmitted_at, readmitted_by FROM _readmissions "
                "WHERE pipeline = ? AND quarantine_id IN (SELECT id FROM _ids)",
                [config.name],
            ).fetchall()
        }
    finally:
        con.unregister("_ids")
    absent = [i for i in ids if i not in stored]
    if absent:
        raise ReadmitRefused(
            f"raw.{config.name}_quarantine has no row {', '.join(map(str, absent))} "
            f"(see `tidemill quarantine list {config.name}`)"
        )
    todo = [f for f in fixes if f.quarantine_id not in done]
    if not todo:
        return Readmission([], [done[i] for i in ids])
    paths = sorted({str(stored[f.quarantine_id][0]) for f in todo})
    file_headers = headers(con, config.name, paths) if fmt == "csv" else {}
    rows: list[dict[str, object]] = []
    for fix in todo:
        path, line, raw, reason = stored[fix.quarantine_id]
        if line == 0:
            raise ReadmitRefused(
                f"row {fix.quarantine_id} is a whole file ({reason}): correct the file and "
                "land it again (a replaced file is read again)"
            )
        usable = raw if not str(reason).startswith(_TEXT_NOT_KEPT) else None
        try:
            values, text = amend_record(
                usable, fmt, file_headers.get(path, []), required, fix.changes
            )
        except ValueError as error:
            raise ReadmitRefused(f"row {fix.quarantine_id}: {error}") from None
        rows.append(
            {**dict(zip(required, values, strict=True)), "_file": path, "_line": line, "_raw": text}
        )
    records = pl.DataFrame(
        rows,
        schema={
            **{c: pl.Utf8 for c in required},
            "_file": pl.Utf8,
            "_line": pl.Int64,
            "_raw": pl.Utf8,
        },
    ).with_columns(
        pl.lit(None, dtype=pl.Utf8).alias("_reject"),
        parse_timestamp(pl.col(config.event_time)).alias("_event_at"),
    )
    _check(con, config, records, [f.quarantine_id for f in todo], now)
    with transaction(con):
        insert_frame(con, t.inbox, records, numbered=("_seq", t.inbox_seq))
        con.executemany(
            "INSERT INTO _readmissions VALUES (?, ?, ?, ?, ?)",
            [[config.name, f.quarantine_id, now, actor, ",".join(sorted(f.changes))] for f in todo],
        )
    return Readmission([f.quarantine_id for f in todo], [done[i] for i in ids if i in done])


def _check(
    con: duckdb.DuckDBPyConnection,
    config: PipelineConfig,
    records: pl.DataFrame,
    ids: list[int],
    now: datetime,
) -> None:
    """Refuse records the batch would quarantine again as they are now (the batch still
    validates them: a key may be stored meanwhile)."""
    stored = known_keys(con, config, records[config.key]) if config.key else None
    checked = validate_records(
        records.with_columns(pl.Series("_qid", ids, dtype=pl.Int64)),
        RecordSchema.of(config),
        now,
        stored,
    ).rejected
    if checked.height:
        first = checked.row(0, named=True)
        more = f" (and {checked.height - 1} more)" if checked.height > 1 else ""
        raise ReadmitRefused(
            f"nothing readmitted: row {first['_qid']} would be quarantined again: "
            f"{first['reason']}{more}"
        )
