"""Commands routed into the process that owns the warehouse, over a local Unix socket.

DuckDB lets no second process open a file that is being written, so commands that change
something (`tidemill models promote`, `backfill`, `erase`, ...) are carried out by the
owner. One JSON line in ({"op": NAME, ...}), one JSON line out ({"ok": true, ...} or
{"ok": false, "error"}). The socket lives in the state folder, mode 0600, so only the
owner's user can reach it. SQL does not come this way: clients read the owner live over
DuckDB's own protocol (warehouse/serving/quack.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import socketserver
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tidemill.errors import TidemillError
from tidemill.private import check_private

MAX_REQUEST_BYTES = 1 << 20
_MAX_SOCKET_PATH = 104  # sun_path is 108 bytes on Linux, 104 on macOS


def socket_path(state_dir: Path) -> Path:
    """Where the owner listens: `run/owner.sock` in the state folder, or, when that path is
    longer than a Unix socket address may be (108 bytes), a socket named by a hash of the
    state folder in a private folder of this user under the temporary folder."""
    inside = state_dir.absolute() / "run" / "owner.sock"
    if len(os.fsencode(inside)) < _MAX_SOCKET_PATH:
        return inside
    digest = hashlib.sha256(os.fsencode(state_dir.absolute())).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / f"tidemill-{os.getuid()}" / f"{digest}.sock"


class OwnerUnavailable(ConnectionError):
    """No owner process is listening."""


class CommandRefused(TidemillError, ValueError):
    """The owner refused or failed the command; the message says why."""


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST_BYTES)
        try:
            request = json.loads(line)
            op = request.get("op")
            if op in self.server.commands:
                result = self.server.commands[op](request)
                reply = json.dumps({"ok": True, **result}, default=str).encode() + b"\n"
            else:
                reply = json.dumps({"ok": False, "error": f"unknown op {op!r}"}).encode() + b"\n"
        except TidemillError as error:  # refused
            reply = json.dumps({"ok": False, "error": str(error)}).encode() + b"\n"
        except (ValueError, KeyError, TypeError):
            reply = json.dumps({"ok": False, "error": "malformed request"}).encode() + b"\n"
        self.wfile.write(reply)


Command = Callable[[dict[str, Any]], dict[str, Any]]


class Refused(TidemillError, ValueError):
    """Raised by a command to refuse a request; the message goes back to the caller."""


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, commands: Mapping[str, Command]) -> None:
        self.commands = dict(commands)
        super().__init__(path, _Handler)


class OwnerSocket:
    """Serves `commands` by name from a background thread until `close()`."""

    def __init__(self, state_dir: Path, commands: Mapping[str, Command]) -> None:
        path = socket_path(state_dir)
        (state_dir / "run").mkdir(mode=0o700, parents=True, exist_ok=True)  # the owner's files
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_private(path.parent, "owner socket folder")
        if path.exists():
            if _listening(path):
                raise RuntimeError(f"another owner already listens on {path}")
            path.unlink()
        self.path = path
        self._server = _Server(str(path), commands)
        os.chmod(path, 0o600)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="tidemill-owner", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and remove the socket."""
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)


def _listening(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            probe.connect(str(path))
        return True
    except OSError:
        return False


def call_owner(state_dir: Path, request: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """Send `request` to the owning process; returns its reply. Raises OwnerUnavailable
    when no owner listens, CommandRefused when it refuses or fails the request."""
    path = socket_path(state_dir)
    if not path.exists():
        raise OwnerUnavailable(str(path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        try:
            client.connect(str(path))
        except OSError as error:
            raise OwnerUnavailable(str(path)) from error
        client.sendall(json.dumps(request).encode() + b"\n")
        chunks = []
        while True:
            chunk = client.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    reply: dict[str, Any] = json.loads(
        b"".join(chunks) or b'{"ok": false, "error": "owner closed the connection"}'
    )
    if not reply["ok"]:
        raise CommandRefused(reply["error"])
    return reply
