"""Reading a Redis stream through a consumer group, as records; and writing to one.

A pipeline is ONE consumer of a consumer group: it reads its own pending entries first
(delivered to it before but never stored: the process stopped before its commit), then
new ones (`XREADGROUP ... >`), and acknowledges and deletes them (`XACK`, `XDEL`) only
after the records and the entry ids have committed in the warehouse (flows/engine/cycle.py).
So an entry is acknowledged once it is stored, the broker re-delivers every other one, and
a stored entry leaves the broker (and its append-only file) for good:

- a crash before the commit leaves the entries pending for this consumer: the next read
  takes them again (nothing lost);
- a crash between the commit and XACK leaves entries pending that are stored already.
  The commit also recorded their ids (the `_cursors` row: `keys_at_last`), and the next
  read acknowledges exactly those before it reads, so they are never stored twice.

Every other consumer of the group gets other entries (that is what a group is for: more
workers, each with its own warehouse, share one stream). Since stored entries are
deleted, a stream tidemill reads is tidemill's: another consumer group on the same
stream would miss what tidemill already stored. A consumer's pending entries
stay its own: handing those of a retired consumer to another (XCLAIM) is a deliberate
operator step, since only the retired one's warehouse knows which it stored. The group
is created (with the stream) on the first read, at the stream's first entry, so
entries published before the pipeline existed are read too. Trimming a stream
(MAXLEN/MINID) below what the group has not read yet loses those entries at the
broker: trim only what every group has read.

An entry becomes a record the way an NDJSON line does: one text column per declared
column from the entry's field of that name (the bytes as UTF-8 text; extra fields are
kept in `_raw` only), `_raw` the entry's fields as a JSON object, `_file`
`redis:<stream>` and `_line` the entry id as a number (:func:`entry_line`), so a
re-delivered entry has the same identity. An entry that is no record (a declared field
absent or repeated, bytes that are not UTF-8, a value over 1 MiB, its fields deleted
from the stream while it was pending) becomes a record with a `_reject` reason that
validation quarantines, never an exception; it is acknowledged like any other.

The conversions (:func:`records_from_entries`, :func:`entry_line`,
:func:`entry_fields`) are pure; :class:`StreamReader` and :func:`publish` talk to the
server (redis-py).
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import polars as pl

from tidemill import layout
from tidemill.config.sources import LOCAL_BROKER
from tidemill.errors import first_line
from tidemill.tasks.records.lines import MAX_FIELD_BYTES, PREVIEW_BYTES
from tidemill.tasks.records.pii import RawFormat
from tidemill.tasks.records.validate import parse_timestamp
from tidemill.tasks.sources.base import (
    Arrived,
    CursorMove,
    CursorPosition,
    Ledger,
    Sample,
    SourceError,
)
from tidemill.tasks.sources.rows import Read, row_line

TIMEOUT_SECONDS = 5
_SEQ_BITS = 20  # entry id ms-seq -> ms << 20 | seq: fits 63 bits until the year 2248
_MS_LIMIT = 1 << (63 - _SEQ_BITS)
_DELETED = "deleted from the stream before it was stored (XDEL or a trim): its fields are gone"

Entry = tuple[str, Sequence[bytes | str] | None]
"""One stream entry as read: its id and its fields as a flat name, value, ... list
(None when the entry was deleted while pending)."""


class StreamError(SourceError):
    """The stream cannot be read or acknowledged (server down, wrong password, not a
    stream, no permission): one line naming the source. Nothing in the warehouse moved
    that the next cycle cannot complete."""


# ----------------------------------------------------------------- pure conversion


def entry_line(entry_id: str) -> int:
    """The `_line` of an entry: `ms << 20 | seq` of its id `ms-seq` (so `_line >> 20`
    and `_line & 1048575` give the id back, and lines sort as ids do); an id beyond that
    range (set explicitly by a producer) gets a stable 63-bit hash instead."""
    ms, _, seq = entry_id.partition("-")
    if ms.isdigit() and seq.isdigit() and int(ms) < _MS_LIMIT and int(seq) < 1 << _SEQ_BITS:
        return int(ms) << _SEQ_BITS | int(seq)
    return row_line(entry_id)


def _text(value: bytes | str) -> tuple[str, bool]:
    """(the value as text, whether it was valid UTF-8); bad bytes become U+FFFD."""
    if isinstance(value, str):
        return value, True
    try:
        return value.decode("utf-8"), True
    except UnicodeDecodeError:
        return value.decode("utf-8", errors="replace"), False


def _entry_record(
    fields: Sequence[bytes | str], columns: list[str]
) -> tuple[list[str | None], str, str | None]:
    """(the declared values, `_raw`, the reason it is no record or None) of one entry."""
    pairs: list[tuple[str, str]] = []
    bad: list[str] = []
    long: list[str] = []
    for name_bytes, value_bytes in zip(fields[0::2], fields[1::2], strict=True):
        name, name_ok = _text(name_bytes)
        value, value_ok = _text(value_bytes)
        if not (name_ok and value_ok):
            bad.append(name)
        if len(value_bytes) > MAX_FIELD_BYTES:
            long.append(name)
            value = f"{value[:PREVIEW_BYTES]}… [{len(value_bytes)} bytes]"
        pairs.append((name, value))
    names = [n for n, _ in pairs]
    problems = []
    if bad:
        problems.append(f"field(s) {', '.join(bad)} hold bytes that are not UTF-8")
    if long:
        problems.append(f"field(s) {', '.join(long)} longer than {MAX_FIELD_BYTES} bytes")
    repeated = sorted(n for n, times in Counter(names).items() if times > 1)
    if repeated:
        problems.append(f"entry repeats field(s) {', '.join(repeated)}")
    absent = [c for c in columns if c not in names]
    if absent:
        problems.append(f"entry lacks field(s) {', '.join(absent)}")
    raw = _json_object(pairs)
    if problems:
        return [None] * len(columns), raw, "; ".join(problems)
    values = dict(pairs)
    return [values[c] for c in columns], raw, None


def _json_object(pairs: list[tuple[str, str]]) -> str:
    """The pairs as a JSON object's text, in their order, a repeated name repeated."""
    dump = functools.partial(json.dumps, ensure_ascii=False)
    return "{" + ", ".join(f"{dump(name)}: {dump(value)}" for name, value in pairs) + "}"


def records_from_entries(
    entries: Sequence[Entry], columns: list[str], label: str, event_time: str
) -> pl.DataFrame:
    """Stream entries -> records shaped like a landing file's: one text column per name
    in `columns`, `_line` (:func:`entry_line`), `_raw` (the fields as a JSON object, in
    the entry's order), `_reject`, `_event_at` and `_file` = `label`."""
    rows: list[list[str | None]] = []
    raws: list[str | None] = []
    rejects: list[str | None] = []
    for _, fields in entries:
        if fields is None:
            rows.append([None] * len(columns))
            raws.append(None)
            rejects.append(_DELETED)
            continue
        values, raw, reason = _entry_record(fields, columns)
        rows.append(values)
        raws.append(raw)
        rejects.append(reason)
    data: dict[str, Any] = {c: [r[i] for r in rows] for i, c in enumerate(columns)}
    data.update({"_line": [entry_line(i) for i, _ in entries], "_raw": raws, "_reject": rejects})
    schema: dict[str, Any] = {c: pl.Utf8 for c in columns}
    schema.update({"_line": pl.Int64, "_raw": pl.Utf8, "_reject": pl.Utf8})
    return pl.DataFrame(data, schema=schema).with_columns(
        parse_timestamp(pl.col(event_time)).alias("_event_at"),
        pl.lit(label, dtype=pl.Utf8).alias("_file"),
    )


def read_position(entries: Sequence[Entry]) -> CursorPosition:
    """What a read's commit records (the `_cursors` row of the source): the last entry
    id read (the greatest: pending entries come before new ones) and every id read,
    which the next read acknowledges before anything else."""
    ids = tuple(entry_id for entry_id, _ in entries)
    return CursorPosition(ids[-1] if ids else None, ids)


def entry_fields(rows: pl.DataFrame) -> list[dict[str, str]]:
    """Rows -> the fields of one entry each (for XADD): every column as text, null as
    the empty text (which validation reads as a missing value, as in a CSV file)."""
    text = rows.select(pl.all().cast(pl.Utf8).fill_null(""))
    return text.to_dicts()


# ----------------------------------------------------------------- I/O


def _client(url: str) -> Any:
    """A client of `url` that hands XREADGROUP replies over as they come (bytes), so
    a field repeated in an entry, or bytes that are not UTF-8, reach the conversion."""
    import redis

    client = redis.Redis.from_url(
        url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS
    )
    client.set_response_callback("XREADGROUP", lambda response, **_: response)
    return client


class StreamReader:
    """Consumer `consumer` of group `group` of stream `stream` at `url` (a context
    manager: the connection closes on exit)."""

    def __init__(self, url: str, stream: str, group: str, consumer: str) -> None:
        self.stream, self.group, self.consumer = stream, group, consumer
        self.label = f"redis:{stream}"
        self._client = _client(url)

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._client.close()

    @contextmanager
    def _talking(self, what: str) -> Iterator[None]:
        import redis

        try:
            yield
        except redis.RedisError as error:
            raise StreamError(f"{self.label}: cannot {what}: {first_line(error)}") from None

    def read(
        self, count: int, columns: list[str], event_time: str, *, committed: Sequence[str] = ()
    ) -> Read:
        """At most `count` entries for this consumer as records (see module docstring):
        its pending ones first, then new ones. `committed` are the ids the last
        committed read stored; those still pending are acknowledged first, never read
        again. Raises StreamError (one line)."""
        with self._talking("read"):
            pending = self._pending()
            if pending and committed:
                self._settle(committed)
                pending = self._pending()
            entries = self._entries("0", count) if pending else []
            if len(entries) < count:
                entries += self._entries(">", count - len(entries))
        records = records_from_entries(entries, columns, self.label, event_time)
        return Read(records=records, position=read_position(entries))

    def ack(self, ids: Sequence[str]) -> None:
        """Acknowledge and delete `ids` (only once they are stored). Raises StreamError."""
        if ids:
            with self._talking("acknowledge"):
                self._settle(ids)

    def _settle(self, ids: Sequence[str]) -> None:
        """XACK and XDEL `ids` in one MULTI/EXEC: stored, so the broker neither re-delivers
        nor keeps them (its append-only file would otherwise hold records from before PII
        protection, where erasure does not reach)."""
        with self._client.pipeline(transaction=True) as settle:
            settle.xack(self.stream, self.group, *ids)
            settle.xdel(self.stream, *ids)
            settle.execute()

    def _pending(self) -> int:
        """Entries delivered to this consumer and not acknowledged; creates the group
        (and the stream) at its first entry when there is none."""
        import redis

        try:
            summary = self._client.xpending(self.stream, self.group)
        except redis.ResponseError as error:
            if not str(error).startswith("NOGROUP"):
                raise
            try:
                self._client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as busy:  # another consumer created it meanwhile
                if not str(busy).startswith("BUSYGROUP"):
                    raise
            return 0
        mine = self.consumer.encode()
        for consumer in summary.get("consumers") or []:
            name = consumer["name"]
            if (name if isinstance(name, bytes) else str(name).encode()) == mine:
                return int(consumer["pending"])
        return 0

    def _entries(self, start: str, count: int) -> list[Entry]:
        reply = self._client.xreadgroup(
            self.group, self.consumer, {self.stream: start}, count=count
        )
        streams = reply.values() if isinstance(reply, dict) else [i for _, i in reply or []]
        entries: list[Entry] = []
        for items in streams:  # RESP3 replies map the stream to its entries, RESP2 pair them
            for entry_id, fields in items:
                text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                entries.append((text, fields))
        return entries


def publish(
    url: str, stream: str, entries: Sequence[Mapping[str, str]], *, maxlen: int | None = None
) -> list[str]:
    """XADD `entries` to `stream` in one MULTI/EXEC, so a publisher that dies adds all
    of them or none; their ids. `maxlen` trims the stream to about that many entries
    (see the module docstring before trimming). Raises StreamError (one line)."""
    import redis

    if not entries:
        return []
    try:
        with _client(url) as client, client.pipeline(transaction=True) as batch:
            for fields in entries:
                batch.xadd(stream, dict(fields), maxlen=maxlen, approximate=True)
            ids = batch.execute()
    except redis.RedisError as error:
        raise StreamError(f"redis:{stream}: cannot publish: {first_line(error)}") from None
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


@dataclass(frozen=True)
class RedisStream:
    """A Redis stream read through a consumer group (a `Source`): bounded pulls, entries
    acknowledged only after the warehouse stored them (see the module docstring)."""

    url: str  # `local`: the state folder's own broker (tidemill/layout.py)
    state_dir: Path
    stream: str
    group: str
    consumer: str
    columns: list[str]
    event_time: str
    label: str
    read_rows: int
    pipeline: str
    raw_format: RawFormat = "json"
    record_format: str = "ndjson"
    pulled: bool = True

    def read_new(self, ledger: Ledger, *, drain: bool) -> Iterator[Arrived]:
        """The next at most `read_rows` entries for this consumer; they are acknowledged
        once the engine has committed them (when this generator resumes)."""
        at = ledger.position(self.label, self.group)
        url = layout.local_broker_url(self.state_dir) if self.url == LOCAL_BROKER else self.url
        with StreamReader(url, self.stream, self.group, self.consumer) as reader:
            read = reader.read(
                self.read_rows, self.columns, self.event_time, committed=at.keys_at_last
            )
            if read.records.height == 0:
                return
            yield Arrived(read.records, cursor=CursorMove(self.label, self.group, read.position))
            reader.ack(read.position.keys_at_last)  # stored: only now may the broker forget them

    def read_window(self, start: datetime, end: datetime) -> Iterator[Arrived]:
        """A stream keeps no time index to re-read a window from."""
        raise SourceError(
            f"{self.pipeline} reads a Redis stream: a stream keeps no time index to re-read "
            "a window from (its entries are acknowledged once stored)"
        )

    def sample(self, target: str | None) -> Sample | None:
        """Nothing to infer from: a stream pipeline declares its columns and classes."""
        return Sample(columns=[], target_values=None)
