"""What every config model is made of: strict frozen models, names and durations, and
the one error a config that cannot be used raises."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from tidemill.errors import TidemillError

IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TimeFeature = Literal["hour", "weekday", "month"]
PiiRule = Literal["hash", "mask_last4", "drop"]


def deployment_name(pipeline: str) -> str:
    """The name of a pipeline's Prefect deployments and artifact keys (micro-batch/NAME,
    backfill/NAME, NAME-batch): artifact keys allow dashes, not underscores."""
    return pipeline.replace("_", "-")


class ConfigError(TidemillError, ValueError):
    """A config file that cannot be used; the message is one actionable line."""


class Strict(BaseModel):
    """A config model: unknown keys are errors, and a loaded config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
