"""SQL of erasing a data subject: find their rows, delete them everywhere, audit it.

The subject is named by its STORED value in the pipeline's subject column (its
pseudonym when the column is hashed); the caller resolves it. Deletions happen in the
caller's transaction, together with the recomputed windows and lag histories, so an
erasure is all or nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb
import polars as pl

from tidemill.config.pipeline import PipelineConfig
from tidemill.warehouse.pipeline_tables import PipelineTables
from tidemill.warehouse.quoting import q


@dataclass(frozen=True)
class Erased:
    """Rows one erasure deleted, per place."""

    raw: int
    clean: int
    quarantine: int
    inbox: int
    predictions: int


def subject_clean_rows(
    con: duckdb.DuckDBPyConnection, config: PipelineConfig, column: str, value: str
) -> pl.DataFrame:
    """The subject's clean rows, with batch_id (what windows, lags and models read)."""
    t = PipelineTables(config.name)
    return con.sql(f"SELECT * FROM {t.clean} WHERE {q(column)} = ?", params=[value]).pl()


def subject_values(
    con: duckdb.DuckDBPyConnection, config: PipelineConfig, column: str
) -> list[str]:
    """Every stored value of the subject column (raw rows and the inbox): what an
    erasure by digest searches. One pass over the column; erasures are rare."""
    t = PipelineTables(config.name)
    return [
        str(v)
        for (v,) in con.sql(
            f"SELECT DISTINCT {q(column)} FROM {t.raw} WHERE {q(column)} IS NOT NULL "
            f"UNION SELECT DISTINCT {q(column)} FROM {t.inbox} WHERE {q(column)} IS NOT NULL"
        ).fetchall()
    ]


def erased_digests(con: duckdb.DuckDBPyConnection, pipeline: str) -> frozenset[str]:
    """Digests of every subject erased from `pipeline`: records read again are dropped."""
    return frozenset(
        str(d)
        for (d,) in con.execute(
            "SELECT DISTINCT subject_digest FROM _erasures WHERE pipeline = ?", [pipeline]
        ).fetchall()
    )


def _like(value: str) -> str:
    return "%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def delete_subject(
    con: duckdb.DuckDBPyConnection, config: PipelineConfig, column: str, value: str
) -> Erased:
    """Delete the subject's rows from raw, clean, quarantine (records whose raw text holds
    the value), the inbox and the predictions (by key); caller's transaction."""
    t = PipelineTables(config.name)

    def count(sql: str, params: list[object]) -> int:
        return int(con.execute(sql, params).fetchall()[0][0])

    predictions = 0
    if config.key:
        key = q(config.key)
        predictions = count(
            f"SELECT count(*) FROM {t.predictions} WHERE {key} IN "
            f"(SELECT {key} FROM {t.raw} WHERE {q(column)} = ?)",
            [value],
        )
        con.execute(
            f"DELETE FROM {t.predictions} WHERE {key} IN "
            f"(SELECT {key} FROM {t.raw} WHERE {q(column)} = ?)",
            [value],
        )
    erased = Erased(
        raw=count(f"SELECT count(*) FROM {t.raw} WHERE {q(column)} = ?", [value]),
        clean=count(f"SELECT count(*) FROM {t.clean} WHERE {q(column)} = ?", [value]),
        quarantine=count(
            f"SELECT count(*) FROM {t.quarantine} WHERE raw_text LIKE ? ESCAPE '\\'",
            [_like(value)],
        ),
        inbox=count(
            f"SELECT count(*) FROM {t.inbox} WHERE {q(column)} = ? OR _raw LIKE ? ESCAPE '\\'",
            [value, _like(value)],
        ),
        predictions=predictions,
    )
    con.execute(f"DELETE FROM {t.raw} WHERE {q(column)} = ?", [value])
    con.execute(f"DELETE FROM {t.clean} WHERE {q(column)} = ?", [value])
    con.execute(f"DELETE FROM {t.quarantine} WHERE raw_text LIKE ? ESCAPE '\\'", [_like(value)])
    con.execute(
        f"DELETE FROM {t.inbox} WHERE {q(column)} = ? OR _raw LIKE ? ESCAPE '\\'",
        [value, _like(value)],
    )
    return erased


def record_erasure(
    con: duckdb.DuckDBPyConnection,
    pipeline: str,
    subject_digest: str,
    requested_by: str,
    erased: Erased,
    *,
    windows: int,
    versions: int,
    artifacts: int,
    first_batch_id: int | None,
    at: datetime,
) -> int:
    """Append the audit row (caller's transaction); returns its id."""
    erasure_id = int(
        con.sql("SELECT coalesce(max(erasure_id), 0) + 1 FROM _erasures").fetchall()[0][0]
    )
    con.execute(
        "INSERT INTO _erasures VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            erasure_id,
            pipeline,
            subject_digest,
            requested_by,
            at,
            erased.raw,
            erased.clean,
            erased.quarantine,
            erased.inbox,
            erased.predictions,
            windows,
            versions,
            artifacts,
            first_batch_id,
        ],
    )
    return erasure_id


def retire_versions(
    con: duckdb.DuckDBPyConnection, pipeline: str, versions: list[int], at: datetime
) -> None:
    """Versions that learned an erased subject: retired, their artifacts marked pruned (the
    caller deletes the files after the commit)."""
    if not versions:
        return
    con.execute(
        "UPDATE ml.model_versions SET status = 'retired', artifact_pruned_at = ? "
        "WHERE pipeline = ? AND version IN (SELECT unnest(?::BIGINT[]))",
        [at, pipeline, versions],
    )


def set_status(con: duckdb.DuckDBPyConnection, pipeline: str, version: int, status: str) -> None:
    """Make `version` the head of its candidate with `status` (champion or challenger)."""
    con.execute(
        "UPDATE ml.model_versions SET status = ? WHERE pipeline = ? AND version = ?",
        [status, pipeline, version],
    )
