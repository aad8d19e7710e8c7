"""Private by default: the state folder (warehouse, snapshots, artifacts, keys, logs) is its
owner's alone.

Every tidemill process sets umask 077 (`restrict_umask`), so whatever it or its children
(the Prefect server, PostgreSQL, Redis) create is readable by its user only. A state
folder or key file that another user can read or write, that another uid owns, or that is
a symlink stops start-up with one line naming the path and the command that fixes it
(`NotPrivate`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tidemill.errors import TidemillError

UMASK = 0o077


class NotPrivate(TidemillError, PermissionError):
    """A state folder or key file others could read, write or swap; the message names the
    path and the command that makes it private."""


def restrict_umask() -> None:
    """Make everything this process (and every process it starts) creates private to its
    user: files 0600, folders 0700."""
    os.umask(UMASK)


def check_private(path: Path, what: str) -> None:
    """Raise NotPrivate unless `path` (an existing file or folder) is a real file or
    folder, owned by this process's user, that no other user may read or write."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise NotPrivate(
            f"{what} {path} is a symlink; tidemill keeps its state only in a real folder "
            f"(replace the link with the folder it points to: {os.path.realpath(path)})"
        )
    if info.st_uid != os.getuid():
        raise NotPrivate(
            f"{what} {path} belongs to uid {info.st_uid}, not to this user (uid {os.getuid()}): "
            f"chown -R {os.getuid()} {path}"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        fix = f"chmod -R go-rwx {path}" if stat.S_ISDIR(info.st_mode) else f"chmod 600 {path}"
        raise NotPrivate(f"{what} {path} is open to other users (mode {mode:o}): {fix}")


def state_folder(path: Path) -> Path:
    """The state folder `path`, made 0700 when missing, else checked to be private
    (NotPrivate otherwise). Returns it."""
    try:
        path.lstat()
    except FileNotFoundError:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)  # mkdir's mode passes through the umask of whoever calls
    check_private(path, "state folder")
    return path
