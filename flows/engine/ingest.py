"""Bring what is new at a pipeline's source into its inbox: one transaction per read (a
landing file version, or a pull of a table or stream), each committed with what it moves
(the file ledger, the cursor). Personal fields (`pii`) are protected before the records
reach the inbox (tasks/records/pii.py), so nothing after this sees them; records of erased
subjects that a source still holds are left out."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from tidemill.config.pipeline import PipelineConfig
from tidemill.keys import get_key
from tidemill.tasks.records.pii import protected_header, protected_records, without_erased
from tidemill.tasks.sources.base import Arrived, CursorPosition, Known, Source
from tidemill.warehouse import cursors, inbox
from tidemill.warehouse.connection import Connection
from tidemill.warehouse.ledger import erasures

log = logging.getLogger("tidemill")


@dataclass(frozen=True)
class WarehouseLedger:
    """What the warehouse knows of one pipeline's source (a `tasks.sources.base.Ledger`)."""

    con: Connection
    pipeline: str

    def versions(self, paths: list[str]) -> dict[str, Known]:
        return inbox.ledger(self.con, self.pipeline, paths)

    def headers(self, paths: list[str]) -> dict[str, list[str]]:
        return inbox.headers(self.con, self.pipeline, paths)

    def position(self, source: str, column: str) -> CursorPosition:
        return cursors.position(self.con, self.pipeline, source, column)


def ingest(
    con: Connection, state_dir: Path, config: PipelineConfig, source: Source, *, drain: bool
) -> int:
    """Read what is new at `source` into the inbox of `config`'s pipeline; returns how
    many reads added to it. A pulled source is read only while the inbox holds less than
    a batch (so a large table never piles up in it)."""
    if source.pulled and inbox.backlog(con, config.name) >= config.batch_rows:
        return 0
    reads = 0
    erased: frozenset[str] | None = None
    for arrived in source.read_new(WarehouseLedger(con, config.name), drain=drain):
        if erased is None:
            erased = erasures.erased_digests(con, config.name)
        records, header = stored_form(config, state_dir, source, arrived, erased)
        inbox.add_arrived(con, config.name, arrived, records, header)
        reads += 1
    return reads


def stored_form(
    config: PipelineConfig,
    state_dir: Path,
    source: Source,
    arrived: Arrived,
    erased: frozenset[str],
) -> tuple[pl.DataFrame, list[str]]:
    """`arrived`'s records and header as they may be stored: personal fields protected,
    records of erased subjects (`erased`: their digests) left out."""
    header = list(arrived.header) if arrived.file is not None else None
    key = get_key(state_dir, "pii") if config.pii else b""
    records = protected_records(
        arrived.records, config.pii, key, raw_format=source.raw_format, header=header
    )
    records = drop_erased(config, state_dir, records, erased)
    if config.pii and header is not None:
        header = protected_header(header, {*config.source_columns, *config.pii})
    return records, header or []


def drop_erased(
    config: PipelineConfig, state_dir: Path, records: pl.DataFrame, erased: frozenset[str]
) -> pl.DataFrame:
    """`records` without those of subjects erased from the pipeline (`erased`: their
    digests), which a source may still hold; how many were left out is logged."""
    if not erased:
        return records
    kept, dropped = without_erased(records, config.subject, get_key(state_dir, "pii"), erased)
    if dropped:
        log.warning(
            "%s: %d records of erased subjects read again: not stored", config.name, dropped
        )
    return kept
