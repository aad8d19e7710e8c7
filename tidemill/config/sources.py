"""Where a pipeline's records come from, as config: a landing folder, a PostgreSQL table,
a Redis stream (tasks/sources/ reads them)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from tidemill.config.fields import Strict


class SourceSpec(Strict):
    """What the stack and the replayers ask of any source, and what a source asks of its
    pipeline; each kind overrides what applies to it."""

    @property
    def landing_folder(self) -> Path | None:
        """Where the source's files land, if it reads files."""
        return None

    @property
    def stream_name(self) -> str | None:
        """The stream it reads, if it reads one."""
        return None

    @property
    def broker(self) -> str | None:
        """The URL of the broker of its stream, if any."""
        return None

    @property
    def uses_local_broker(self) -> bool:
        """Whether it reads the state folder's own broker (`url = "local"`)."""
        return False

    def check_pipeline(
        self,
        *,
        key: str | None,
        features: list[str] | None,
        task: str,
        classes: object,
        pii: dict[str, str],
    ) -> None:
        """Raise ValueError (one line) when the pipeline lacks what this source needs; by
        default it needs nothing."""


class FilesSource(SourceSpec):
    """A landing folder: every file matching `path` is read once (see tasks/sources/files.py)."""

    kind: Literal["files"] = Field(description="A landing folder of files.")
    path: str = Field(description="Glob of landing files, relative to the config file's folder.")
    format: Literal["csv", "parquet", "ndjson"] = Field(
        default="csv", description="File format of the landing files."
    )
    settle_seconds: float = Field(
        default=1.0,
        ge=0,
        description="A file modified less than this long ago is left for the next cycle "
        "(its writer may still be writing). Drains ignore it.",
    )

    @property
    def landing_folder(self) -> Path | None:
        """Where the files land (a replay writes there)."""
        return Path(self.path).parent


_IDENTIFIER_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


class PostgresSource(SourceSpec):
    """A PostgreSQL table read incrementally by a cursor column (see tasks/sources/postgres.py).

    Reads are inclusive on the last cursor value and de-duplicated on the pipeline's key
    (like dlt), so rows written with the same cursor value as the last read's maximum are
    neither missed nor read twice.
    """

    kind: Literal["postgres"] = Field(description="A PostgreSQL table read by a cursor column.")
    dsn: str = Field(
        description="libpq connection string or URL; leave the password out and let libpq "
        "read PGPASSWORD or ~/.pgpass."
    )
    table: str = Field(description="Table or view to read, `name` or `schema.name`.")
    cursor: str = Field(
        description="Column that grows when a row is written (updated_at, an id, ...)."
    )
    read_rows: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Most rows one read takes; default 10 x batch_rows.",
    )

    @field_validator("table")
    @classmethod
    def _table_is_a_name(cls, value: str) -> str:
        if not _IDENTIFIER_PATH.match(value):
            raise ValueError("must be a table name, `name` or `schema.name`")
        return value

    @field_validator("cursor")
    @classmethod
    def _cursor_is_a_name(cls, value: str) -> str:
        if not _IDENTIFIER_PATH.match(value) or "." in value:
            raise ValueError("must be a column name")
        return value

    @property
    def label(self) -> str:
        """How records name their origin (`_file`): `postgres:<table>`."""
        return f"postgres:{self.table}"

    def check_pipeline(
        self,
        *,
        key: str | None,
        features: list[str] | None,
        task: str,
        classes: object,
        pii: dict[str, str],
    ) -> None:
        """What a postgres pipeline must declare: the key that de-duplicates reads at the
        last cursor value, and the columns (they are not looked up in the table); its key
        and cursor are kept as read in _cursors, so they cannot be personal columns."""
        if not key:
            raise ValueError(
                "a postgres source needs `key` (rows at the last cursor value are told apart by it)"
            )
        if features is None:
            raise ValueError(
                "a postgres source needs `features` (they are not read from the table)"
            )
        if task == "classification" and classes is None:
            raise ValueError("a postgres source needs `classes` (they are not read from the table)")
        if {key, self.cursor} & set(pii):
            raise ValueError(
                "a postgres source's key and cursor are kept as read in _cursors: they cannot "
                "be pii columns"
            )


# --- redis_stream source (tasks/sources/redis_stream.py) ---------------------------------------
LOCAL_BROKER = "local"
_STREAM_NAME = re.compile(r"^[^\s\x00-\x1f]{1,200}$")


class RedisStreamSource(SourceSpec):
    """A Redis stream read through a consumer group (see tasks/sources/redis_stream.py).

    The pipeline is one consumer of the group: it takes its own unacknowledged entries
    first, then new ones, and acknowledges them only once they are stored, so a crash
    re-delivers them and their ids (kept in _cursors) stop them being stored twice.
    """

    kind: Literal["redis_stream"] = Field(
        description="A Redis stream read through a consumer group."
    )
    url: str = Field(
        description='"local": the broker `tidemill up` runs in the state folder '
        "(deployments/stack/redis_server.py); else redis://[:PASSWORD@]HOST:PORT/DB (rediss:// "
        "for TLS) of a server of yours."
    )
    stream: str = Field(description="The stream's key.")
    group: str = Field(
        default="tidemill",
        description="Consumer group; created at the stream's first entry when missing.",
    )
    consumer: str = Field(
        default="worker-1",
        description="This pipeline's name in the group. Keep it: its unacknowledged "
        "entries are re-delivered to this name only.",
    )
    read_rows: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Most entries one read takes; default 10 x batch_rows.",
    )

    @field_validator("url")
    @classmethod
    def _url_is_redis(cls, value: str) -> str:
        if value == LOCAL_BROKER:
            return value
        if not value.startswith(("redis://", "rediss://")):
            raise ValueError("must be a redis:// or rediss:// URL")
        try:
            urlsplit(value).port  # noqa: B018 (reading it checks it is a number)
        except ValueError:
            raise ValueError("must be a redis:// or rediss:// URL with a numeric port") from None
        return value

    @field_validator("stream", "group", "consumer")
    @classmethod
    def _name_is_plain(cls, value: str) -> str:
        if not _STREAM_NAME.match(value):
            raise ValueError("must be 1-200 characters without spaces or control characters")
        return value

    @property
    def label(self) -> str:
        """How records name their origin (`_file`): `redis:<stream>`."""
        return f"redis:{self.stream}"

    @property
    def stream_name(self) -> str | None:
        """The stream's key."""
        return self.stream

    @property
    def broker(self) -> str | None:
        """The broker's URL (`local`: the state folder's own)."""
        return self.url

    @property
    def uses_local_broker(self) -> bool:
        """Whether the stream is on the state folder's own broker (`url = "local"`)."""
        return self.url == LOCAL_BROKER

    def check_pipeline(
        self,
        *,
        key: str | None,
        features: list[str] | None,
        task: str,
        classes: object,
        pii: dict[str, str],
    ) -> None:
        """What a redis_stream pipeline must declare: its columns (no entry is read to
        find them)."""
        if features is None:
            raise ValueError(
                "a redis_stream source needs `features` (they are not read from entries)"
            )
        if task == "classification" and classes is None:
            raise ValueError(
                "a redis_stream source needs `classes` (they are not read from entries)"
            )


Source = Annotated[FilesSource | PostgresSource | RedisStreamSource, Field(discriminator="kind")]
SOURCE_KINDS = ("files", "postgres", "redis_stream")
