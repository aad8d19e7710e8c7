"""Durable file writes: a reader sees the old file or the whole new one, never a part."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` through `<path>.part`: `write` fills it, then fsync, rename, and fsync
    of the folder so the rename survives a power cut. (`.part` never matches `*.csv`-like
    globs, so a landing-folder reader never sees it.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    with part.open("wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(part, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
