"""How a state folder is split between workers (`tidemill up --workers N`).

DuckDB allows one writing process per file, so several workers means several warehouse
files. With N > 1 workers, `up` assigns the pipelines round-robin (in name order) and
records the assignment in `<state>/layout.json`; worker `wK` owns the state folder
`<state>/workers/wK/` — its warehouse, snapshot, artifacts, keys and query socket — and
serves only its pipelines' deployments. The Prefect server, the broker, the landing
folders and the logs stay in `<state>/`. The layout is sticky: a pipeline's data lives in
its worker's folder, so another N is refused until the folder is cleared.

`owner_config(config, pipeline)` is the config every command about a pipeline uses: the
worker's, whose `state_dir` is that worker's folder (the main one without a layout).
"""

from __future__ import annotations

import json
from pathlib import Path

from tidemill import private
from tidemill.config.fields import ConfigError
from tidemill.config.load import TidemillConfig
from tidemill.durable import write_atomic
from tidemill.errors import TidemillError

LAYOUT_FILE = "layout.json"
CATALOG_FILE = "catalog.sql"


class LayoutError(ConfigError):
    """The requested layout contradicts the recorded one; the message says what to do."""


def assign(pipelines: list[str], workers: int) -> dict[str, list[str]]:
    """Worker name (w1, w2, ...) -> its pipelines, round-robin in name order."""
    names = sorted(pipelines)
    count = max(1, min(workers, len(names)))
    return {f"w{k + 1}": names[k::count] for k in range(count)}


def read(state_dir: Path) -> dict[str, list[str]]:
    """The recorded assignment; empty without one (one worker owns the state folder)."""
    try:
        data = json.loads((state_dir / LAYOUT_FILE).read_text())
    except FileNotFoundError:
        return {}
    return {str(w): [str(p) for p in names] for w, names in data["workers"].items()}


def settle(config: TidemillConfig, workers: int) -> dict[str, list[str]]:
    """The layout for `workers` workers: recorded on first use, then the same every time
    (LayoutError when `workers` or the pipelines differ from the recorded one)."""
    recorded = read(config.state_dir)
    wanted = assign(list(config.pipelines), workers) if workers > 1 else {}
    if recorded == wanted:
        return recorded
    if recorded or (wanted and (config.state_dir / "warehouse.duckdb").exists()):
        have = f"{len(recorded)} workers" if recorded else "one worker"
        raise LayoutError(
            f"{config.state_dir} is laid out for {have}"
            + (f" ({', '.join(f'{w}: {p}' for w, p in recorded.items())})" if recorded else "")
            + f"; start it that way, or clear the state folder to use --workers {workers}"
        )
    private.state_folder(config.state_dir)
    text = (json.dumps({"workers": wanted}, indent=1) + "\n").encode()
    write_atomic(config.state_dir / LAYOUT_FILE, lambda handle: handle.write(text))
    return wanted


def worker_dir(state_dir: Path, worker: str) -> Path:
    """The state folder worker `worker` owns."""
    return state_dir / "workers" / worker


def shared_dir(state_dir: Path) -> Path:
    """The folder of the servers every worker shares (Prefect, the broker): `state_dir`
    itself, or the folder above `workers/wK/` for a worker's."""
    if state_dir.parent.name == "workers" and (state_dir.parent.parent / LAYOUT_FILE).exists():
        return state_dir.parent.parent
    return state_dir


def broker_dir(state_dir: Path) -> Path:
    """The local Redis broker's folder (config, port, password, data), shared by every
    worker of the state folder."""
    return shared_dir(state_dir).resolve() / "redis"


def local_broker_url(state_dir: Path, db: int = 0) -> str:
    """`redis://:PASSWORD@127.0.0.1:PORT/db` of the state folder's local broker (a source
    with `url = "local"`), from the port and password files its server keeps."""
    base = broker_dir(state_dir)
    try:
        port = int((base / "port").read_text())
        password = (base / "password").read_text().strip()
    except (OSError, ValueError):
        raise TidemillError(
            f"no Redis set up in {base}; start it first (`tidemill up` starts it)"
        ) from None
    return f"redis://:{password}@127.0.0.1:{port}/{db}"


def worker_config(config: TidemillConfig, worker: str) -> TidemillConfig:
    """`config` as worker `worker` sees it: its pipelines, its state folder."""
    layout = read(config.state_dir)
    if worker not in layout:
        known = ", ".join(layout) or "none: one worker owns the state folder"
        raise LayoutError(f"no worker named '{worker}' in {config.state_dir} (workers: {known})")
    state = config.state.model_copy(update={"dir": worker_dir(config.state_dir, worker)})
    pipelines = {n: p for n, p in config.pipelines.items() if n in layout[worker]}
    return config.model_copy(update={"state": state, "pipelines": pipelines})


def owner_config(config: TidemillConfig, pipeline: str) -> TidemillConfig:
    """The config of the worker that owns `pipeline` (`config` itself without a layout)."""
    config.pipeline(pipeline)  # an unknown name fails here, naming the declared ones
    for worker, names in read(config.state_dir).items():
        if pipeline in names:
            return worker_config(config, worker)
    return config


def owners(config: TidemillConfig) -> dict[str, tuple[TidemillConfig, list[str]]]:
    """Owner name -> (its config, its pipelines): `live` alone, or one per worker."""
    workers = read(config.state_dir)
    if not workers:
        return {"live": (config, sorted(config.pipelines))}
    return {w: (worker_config(config, w), names) for w, names in workers.items()}


def catalog_file(state_dir: Path) -> Path:
    """The script that attaches every owner of a state folder live over Quack (written by
    `tidemill sql` and `tidemill up`: tidemill/cli/sql.py)."""
    return state_dir / CATALOG_FILE
