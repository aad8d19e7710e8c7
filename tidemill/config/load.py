"""Reading the config file: `load_config` returns a validated TidemillConfig or raises
ConfigError whose message is ONE line naming the key and what is allowed (the CLI prints
it as is). Relative paths resolve against the folder of the config file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from tidemill.config.fields import ConfigError, Strict
from tidemill.config.pipeline import PipelineConfig
from tidemill.config.sources import SOURCE_KINDS


class StateConfig(Strict):
    """Where the DuckDB file, artifacts, snapshots and server state live."""

    dir: Path = Field(
        default=Path(".tidemill"),
        description="DuckDB file, artifacts, snapshot, landing folder and server state.",
    )
    encryption: bool = Field(
        default=True,
        description="Encrypt the warehouse, its WAL and snapshots at rest (DuckDB's AES-GCM) "
        "with TIDEMILL_ENCRYPTION_KEY or, unset, keys/encryption.key (made once, 0600). "
        "Changing it converts the warehouse when its owner next opens it.",
    )


class ServingConfig(Strict):
    """How other processes read the warehouse (live SQL over Quack is always on)."""

    snapshot_every_seconds: float = Field(
        default=0.0,
        ge=0,
        description="Publish a read-only copy of the warehouse file (snapshot.duckdb) at most "
        "this often, for readers that need a file; 0: no copies (readers use `tidemill sql` "
        "live). A copy runs in the background, the next waits 10 times as long as it took.",
    )


class TidemillConfig(Strict):
    """A whole config file."""

    state: StateConfig = Field(default_factory=StateConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    pipelines: dict[str, PipelineConfig] = Field(default_factory=dict)
    path: Path = Path("tidemill.toml")

    @property
    def state_dir(self) -> Path:
        """Absolute state folder."""
        return self.state.dir

    def pipeline(self, name: str) -> PipelineConfig:
        """The named pipeline, or a ConfigError listing the declared ones."""
        if name not in self.pipelines:
            known = ", ".join(sorted(self.pipelines)) or "none"
            raise ConfigError(f"{self.path}: no pipeline named '{name}' (declared: {known})")
        return self.pipelines[name]


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("function-after[_columns_are_consistent()]",)]
    # a discriminated union names the tag in the location: source.files.format -> source.format
    parts = [
        p
        for i, p in enumerate(parts)
        if not (p in SOURCE_KINDS and i > 0 and parts[i - 1] == "source")
    ]
    return ".".join(p for p in parts if not p.startswith(("function-", "tagged-union")))


def _one_line(path: Path, error: ValidationError) -> str:
    first = error.errors()[0]
    where = _location(first["loc"])
    kind = first["type"]
    message = first["msg"].removeprefix("Value error, ")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        kinds = " or ".join(repr(k) for k in SOURCE_KINDS)
        got = first.get("input")
        tag = got.get("kind") if isinstance(got, dict) else None
        if tag is None:
            return f"{path}: {where}.kind: is required ({kinds})"
        return f"{path}: {where}.kind: must be {kinds} (got {tag!r})"
    if kind == "extra_forbidden":
        message = "unknown key (check the spelling; see docs/configuration.md)"
    elif kind == "missing":
        message = "is required"
    elif kind == "literal_error":
        message = message.replace("Input should be", "must be")
    got = first.get("input")
    suffix = (
        f" (got {got!r})" if kind not in ("missing", "extra_forbidden") and got is not None else ""
    )
    if isinstance(got, dict | list):
        suffix = ""
    return f"{path}: {where}: {message}{suffix}" if where else f"{path}: {message}"


def parse_config(raw: dict[str, Any], path: Path) -> TidemillConfig:
    """Validate a parsed TOML document; paths resolve against `path`'s folder."""
    base = path.resolve().parent
    pipelines = raw.get("pipelines", {})
    if not isinstance(pipelines, dict):
        raise ConfigError(f"{path}: pipelines: must be a table of [pipelines.NAME] sections")
    document = dict(raw)
    document["pipelines"] = {}
    for name, body in pipelines.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: pipelines.{name}: must be a table")
        body = {**body, "name": name}
        source = body.get("source")
        if isinstance(source, dict) and isinstance(source.get("path"), str):
            source_path = Path(source["path"])
            if not source_path.is_absolute():
                source = {**source, "path": str(base / source_path)}
            body["source"] = source
        document["pipelines"][name] = body
    state = document.get("state", {})
    if isinstance(state, dict) and "dir" in state:
        state_dir = Path(str(state["dir"]))
        document["state"] = {
            **state,
            "dir": state_dir if state_dir.is_absolute() else base / state_dir,
        }
    else:
        document["state"] = {
            **(state if isinstance(state, dict) else {}),
            "dir": base / ".tidemill",
        }
    document["path"] = path
    try:
        return TidemillConfig.model_validate(document)
    except ValidationError as error:
        raise ConfigError(_one_line(path, error)) from None


def load_config(path: Path) -> TidemillConfig:
    """Read and validate a config file, or raise ConfigError (one line)."""
    if not path.exists():
        raise ConfigError(
            f"{path}: config file not found (pass --config PATH or set TIDEMILL_CONFIG)"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return parse_config(raw, path)
