"""Process-wide settings: one pydantic-settings object.

Precedence: environment (``TIDEMILL_*``) > ``.env`` > ``[tool.tidemill]`` in
pyproject.toml > the defaults below. Pipelines themselves are declared in the TOML
config file that ``config_path`` points at (see :mod:`tidemill.config`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

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
    snapshot_every_seconds: float = Field(
        default=5.0,
        ge=0,
        description="Least time between two published read-only snapshots (0: every batch).",
    )
    checkpoint_every_batches: int = Field(
        default=50,
        ge=1,
        description="Run DuckDB CHECKPOINT every N committed batches instead of automatically.",
    )
    max_lateness_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Scheduled runs older than this are skipped instead of run late.",
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
