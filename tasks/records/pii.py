"""Personal data, protected as records are read: before the inbox, every table, log,
artifact, Prefect artifact or model feature sees it.

A pipeline's `pii` maps columns to a rule:

- `hash`: the keyed pseudonym HMAC-SHA256(key, value) as hex, truncated to 32 characters
  (128 bits). Deterministic under one key, so keys, joins, aggregates, erasure and the
  de-duplication of repeated records keep working on pseudonyms. The value is hashed as
  written, surrounding spaces removed; empty stays empty (it means "missing").
- `mask_last4`: twelve `*` then the value's last four digits (`************1234`); a value
  with fewer than 12 digits (no card number) becomes sixteen `*`.
- `drop`: the column never leaves the reader (the config refuses it as key/feature/target).

`_raw`, the record's text kept for quarantine, is rewritten too:

- a record whose fields are known (a CSV line the reader accepted, so its fields line up
  with the header; a JSON object: ndjson, Parquet and PostgreSQL records, by key at any
  depth) keeps its text with every personal field replaced by its protected value (CSV: a
  dropped field is left empty so the columns still line up; JSON: the key is removed),
  re-serialised;
- a CSV record the reader rejected (ragged, bad UTF-8, an unclosed quote, a line too long,
  a file lacking a column or without a header line) and any text that is no JSON object
  (invalid JSON, a whole unreadable file) has no fields to go by: its text keeps only its
  shape, every letter masked as `x`/`X` and every digit as `9`
  (`Xxx Xxx,xxx.xxx@xxxxx.xxx,9999...`), so a person still sees where the extra comma or
  the bad byte is, and the landing file at `_file`/`_line` holds the original.

The reader's reject reason is scrubbed of any personal value of its record as well, and a
file's header (kept in the `_files` ledger) keeps only the names the pipeline knows: the
first line of a file without a header is data. Pure: the caller supplies the key
(tidemill/keys.py `get_key(state_dir, "pii")`).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal

import polars as pl

from tidemill.config.fields import PiiRule
from tidemill.config.pipeline import PipelineConfig

HASH_HEX_CHARS = 32
"""Length of a pseudonym: 128 bits of HMAC-SHA256, far from any collision at data scale."""

CARD_MIN_DIGITS = 12
MASK = "*"
RawFormat = Literal["csv", "json"]
Protect = Callable[[PiiRule, str | None], str | None]  # closes over the key and a cache


def pseudonym(key: bytes, value: str) -> str:
    """The `hash` rule: hex HMAC-SHA256 of `value` (spaces around it removed) under `key`,
    first 32 characters; an empty value stays empty."""
    text = value.strip()
    if not text:
        return text
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()[:HASH_HEX_CHARS]


def masked_last4(value: str) -> str:
    """The `mask_last4` rule: `************` and the last four digits when the value has
    at least 12 digits (a card number), else sixteen `*`; an empty value stays empty."""
    if not value.strip():
        return value.strip()
    digits = [c for c in value if c.isdigit()]
    if len(digits) < CARD_MIN_DIGITS:
        return MASK * 16
    return MASK * 12 + "".join(digits[-4:])


def shape_masked(text: str) -> str:
    """`text` with every letter as `x`/`X` and every digit as `9`; the rest kept."""
    return "".join(
        "9" if c.isdigit() else ("X" if c.isupper() else "x") if c.isalpha() else c for c in text
    )


def protected_value(rule: PiiRule, value: str | None, key: bytes) -> str | None:
    """`value` under `rule` (None stays None; `drop` gives None)."""
    if value is None or rule == "drop":
        return None
    if rule == "hash":
        return pseudonym(key, value)
    return masked_last4(value)


def subject_value(config: PipelineConfig, plaintext: str, key: bytes) -> str:
    """The stored form of a data subject's value in the pipeline's `subject` column: its
    pseudonym when the column is hashed, else the value as stored (spaces around it
    removed). What `tidemill erase PIPELINE --subject VALUE` looks for."""
    if config.subject is None:
        raise ValueError(f"pipeline {config.name} declares no `subject` column")
    if config.pii.get(config.subject) == "hash":
        return pseudonym(key, plaintext)
    return plaintext.strip()


def protected_changes(
    config: PipelineConfig, changes: Mapping[str, str], key: bytes
) -> dict[str, str | None]:
    """Corrections a person types (`tidemill quarantine readmit --set`), under the
    pipeline's pii rules: a corrected e-mail is stored as its pseudonym, like one read
    from a file."""
    return {
        column: protected_value(config.pii[column], value, key) if column in config.pii else value
        for column, value in changes.items()
    }


def subject_digest(key: bytes, stored: str) -> str:
    """HMAC-SHA256 of a subject's stored value under the pii key: the handle the erasure
    audit keeps and the erasure flow takes, never the value."""
    return hmac.new(key, stored.encode(), hashlib.sha256).hexdigest()


def without_erased(
    records: pl.DataFrame, column: str | None, key: bytes, erased: Collection[str]
) -> tuple[pl.DataFrame, int]:
    """`records` (stored form, after `protected_records`) without those of erased
    subjects: whose `column` value's digest is in `erased`. Returns them and how many
    were left out. An erased subject whose records are read again (a backfill, a
    replaced file, a source that still holds them) must not come back."""
    if not erased or column is None or column not in records.columns or records.height == 0:
        return records, 0
    values = records[column].unique().drop_nulls().to_list()
    gone = [v for v in values if subject_digest(key, v) in erased]
    if not gone:
        return records, 0
    kept = records.filter(~pl.col(column).is_in(gone) | pl.col(column).is_null())
    return kept, records.height - kept.height


def protected_records(
    records: pl.DataFrame,
    rules: Mapping[str, PiiRule],
    key: bytes,
    *,
    raw_format: RawFormat,
    header: list[str] | None = None,
) -> pl.DataFrame:
    """`records` (a reader's output: text columns plus `_raw` and `_reject`) with every
    personal value protected: in its own column, inside `_raw` and inside `_reject`.

    `raw_format` says how `_raw` splits into fields: `csv` (by `header`, the file's
    columns) or `json` (an object per record). Returns `records` itself when there are
    no rules.
    """
    if not rules or records.height == 0:
        return records
    cache: dict[tuple[str, str], str | None] = {}

    def protect(rule: PiiRule, value: str | None) -> str | None:
        if value is None:
            return None
        found = cache.get((rule, value), "\x00")
        if found == "\x00":
            found = cache[(rule, value)] = protected_value(rule, value, key)
        return found

    columns = []
    for column, rule in rules.items():
        if column in records.columns:  # `drop` is never a read column; null it regardless
            values = [protect(rule, v) for v in records[column].to_list()]
            columns.append(pl.Series(column, values, dtype=pl.Utf8))
    raws, rejects = [], []
    for raw, reject in zip(records["_raw"].to_list(), records["_reject"].to_list(), strict=True):
        text, found = _protected_raw(raw, reject, rules, protect, raw_format, header)
        raws.append(text)
        rejects.append(_scrubbed(reject, found, protect))
    return records.with_columns(
        *columns,
        pl.Series("_raw", raws, dtype=pl.Utf8),
        pl.Series("_reject", rejects, dtype=pl.Utf8),
    )


def protected_header(header: list[str], known: Collection[str]) -> list[str]:
    """A file's column names with those not in `known` (the pipeline's columns and its
    personal ones) shape-masked: in a file without a header line, line 1 is data."""
    return [name if name in known else shape_masked(name) for name in header]


def _protected_raw(
    raw: str | None,
    reject: str | None,
    rules: Mapping[str, PiiRule],
    protect: Protect,
    raw_format: RawFormat,
    header: list[str] | None,
) -> tuple[str | None, dict[str, PiiRule]]:
    """The protected text of one record and the personal values it held (value -> rule)."""
    if raw is None:
        return None, {}
    found: dict[str, PiiRule] = {}
    if raw_format == "csv":
        fields = None if reject is not None else _csv_fields(raw, header)
        if fields is None:
            return shape_masked(raw), found
        assert header is not None
        for i, name in enumerate(header):
            rule = rules.get(name)
            if rule is not None:
                found[fields[i]] = rule
                fields[i] = protect(rule, fields[i]) or ""
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow(fields)
        return out.getvalue(), found
    try:
        obj = json.loads(raw)
    except ValueError:
        return shape_masked(raw), found
    if not isinstance(obj, dict):
        return shape_masked(raw), found
    clean = _protected_json(obj, rules, protect, found)
    return json.dumps(clean, ensure_ascii=False, separators=(",", ":")), found


def _csv_fields(raw: str, header: list[str] | None) -> list[str] | None:
    """The fields of a CSV record the reader accepted, when they line up with `header`
    (they do: this only guards against a reader that changed), else None."""
    if not header:
        return None
    try:
        rows = list(csv.reader(io.StringIO(raw, newline="")))
    except csv.Error:
        return None
    if len(rows) != 1 or len(rows[0]) != len(header):
        return None
    return rows[0]


def _json_text(value: object) -> str:
    """A JSON value as the ndjson reader's text (true/false, numbers as Python prints)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def _protected_json(
    value: Any, rules: Mapping[str, PiiRule], protect: Protect, found: dict[str, PiiRule]
) -> Any:
    if isinstance(value, list):
        return [_protected_json(v, rules, protect, found) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for name, item in value.items():
        rule = rules.get(name)
        if rule is None:
            out[name] = _protected_json(item, rules, protect, found)
        elif rule != "drop":
            text = None if item is None else _json_text(item)
            if text is not None:
                found[text] = rule
            out[name] = protect(rule, text)
        elif item is not None:
            found[_json_text(item)] = rule
    return out


def _scrubbed(reject: str | None, found: dict[str, PiiRule], protect: Protect) -> str | None:
    """A reject reason with the record's personal values replaced (longest first)."""
    if reject is None or not found:
        return reject
    for value in sorted((v for v in found if v.strip()), key=len, reverse=True):
        if value in reject:
            reject = reject.replace(value, protect(found[value], value) or "")
    return reject
