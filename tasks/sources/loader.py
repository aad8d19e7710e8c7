"""The one place a source kind is told apart: a pipeline's config -> its `Source`."""

from __future__ import annotations

from pathlib import Path

from tidemill.config.pipeline import PipelineConfig
from tidemill.config.sources import FilesSource, PostgresSource
from tidemill.tasks.sources.base import Source
from tidemill.tasks.sources.files import LandingFiles
from tidemill.tasks.sources.postgres import PostgresTable
from tidemill.tasks.sources.redis_stream import RedisStream


def source_for(config: PipelineConfig, state_dir: Path) -> Source:
    """The source `config` declares, reading the pipeline's declared columns (`state_dir`
    locates the local broker). A pulled source reads `read_rows` per pull, by default ten
    batches."""
    spec = config.source
    # a config whose features are still to be read from the source: sampled, not read
    columns = config.source_columns if config.features is not None else []
    if isinstance(spec, FilesSource):
        return LandingFiles(spec.path, spec.format, spec.settle_seconds, columns, config.event_time)
    read_rows = spec.read_rows or 10 * config.batch_rows
    if isinstance(spec, PostgresSource):
        assert config.key is not None  # the config refuses a postgres source without one
        return PostgresTable(
            spec.dsn,
            spec.table,
            spec.cursor,
            config.key,
            columns,
            config.event_time,
            spec.label,
            read_rows,
        )
    return RedisStream(
        spec.url,
        state_dir,
        spec.stream,
        spec.group,
        spec.consumer,
        columns,
        config.event_time,
        spec.label,
        read_rows,
        config.name,
    )
