"""The Runtime this process owns, shared by every flow run executed in it.

The worker (deployments/worker.py) installs its Runtime here before it starts
executing scheduled runs in-process, so each run finds the open DuckDB connection and
the models in memory. A flow run executed anywhere else (a test harness, a process
worker) opens its own Runtime on first use, provided no other process owns the file.
"""

from __future__ import annotations

import threading

from tidemill.config import load_config
from tidemill.flows.runtime import Runtime
from tidemill.settings import get_settings

_lock = threading.Lock()
_runtime: Runtime | None = None


def install(runtime: Runtime | None) -> None:
    """Make `runtime` the one flow runs in this process use (None to forget it)."""
    global _runtime
    with _lock:
        _runtime = runtime


def resident_runtime() -> Runtime:
    """This process's Runtime, opened from the configured file if none was installed."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime.open(load_config(get_settings().config))
        return _runtime
