"""`tidemill sql` and `tidemill serving`: the live warehouse in DuckDB's own clients."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from tidemill import layout
from tidemill.cli import session
from tidemill.cli.output import Format, print_result
from tidemill.config.load import TidemillConfig
from tidemill.errors import TidemillError
from tidemill.keys import get_token, key_file
from tidemill.warehouse.encryption import key_for
from tidemill.warehouse.serving.shell import (
    TABLES_SQL,
    Owner,
    init_sql,
    on_owner,
    snapshot_sql,
    write_init,
)
from tidemill.warehouse.serving.snapshot import snapshot_path


def serving(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Where each owner serves its warehouse live (DuckDB's Quack protocol, 127.0.0.1).

    Any DuckDB 1.5.5 client with the quack and httpfs extensions attaches it with
    ATTACH 'URI' AS name (TOKEN '<the token file's text>'), then runs
    FROM name.query('SELECT ...'). Statements that could write are refused.
    """
    from tidemill.warehouse.serving import quack

    rows = []
    for name, (owner, pipelines) in layout.owners(session.config()).items():
        endpoint = quack.read_endpoint(owner.state_dir, "")
        rows.append(
            {
                "name": name,
                "pipelines": pipelines,
                "uri": endpoint.uri if endpoint else None,
                "token_file": str(key_file(owner.state_dir, "quack").absolute()),
                "serving": endpoint is not None and quack.listening(endpoint),
            }
        )
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return
    columns = list(rows[0])
    values = [tuple(", ".join(v) if isinstance(v, list) else v for v in r.values()) for r in rows]
    print_result(columns, values, Format.table, title="tidemill serving")


def sql(
    command: Annotated[
        str | None,
        typer.Option(
            "-c", "--command", help="Run this read-only SQL on the owner and exit, like psql -c."
        ),
    ] = None,
    pipeline: Annotated[
        str | None,
        typer.Option(
            "--pipeline", "-p", help="With -c and several workers: the owner of this pipeline."
        ),
    ] = None,
    snapshot: Annotated[
        bool,
        typer.Option(
            "--snapshot",
            help="Open the published snapshot files instead (needs [serving] "
            "snapshot_every_seconds > 0); works with no owner running.",
        ),
    ] = False,
) -> None:
    """Open the `duckdb` shell on the live warehouse of every running owner.

    Each owner is attached under its name (`live`, or w1, w2 with several workers):
    FROM live.query('SELECT ... JOIN ...') runs a whole statement on it. Its tables are
    also views under their own names (raw.flights, ml.model_versions, _batches, ...) for
    statements that read one table (DuckDB 1.5.5 scans one remote table per statement).
    -c runs its statement on the owner whole. Read-only: owners refuse anything else.
    The script it runs first is kept as <state>/catalog.sql (0600: it holds the tokens),
    for `duckdb -init` or any client. Needs a running `tidemill up` or `tidemill run`.
    """
    from tidemill.warehouse.serving import quack

    config = session.config()
    everyone = layout.owners(config)
    target = None
    if pipeline is not None:
        config.pipeline(pipeline)  # an unknown name fails here, naming the declared ones
        target = next(n for n, (_, names) in everyone.items() if pipeline in names)
    elif command is not None and len(everyone) > 1:
        raise TidemillError(
            f"{len(everyone)} workers own {config.state_dir}: add --pipeline P to run "
            "the statement on the one that owns P"
        )
    else:
        target = next(iter(everyone))
    shell = shutil.which("duckdb", path=str(Path(sys.executable).parent)) or shutil.which("duckdb")
    if shell is None:
        raise TidemillError("no `duckdb` shell found: pip install duckdb-cli (make install does)")
    if snapshot:
        init = _snapshot_init(config, everyone, target)
        arguments = [shell, "-init", str(init)]
        if command is not None:
            arguments += ["-bail", "-c", command]
    else:
        init, serving = write_live_catalog(config, everyone)
        arguments = [shell, "-init", str(init)]
        if command is not None:
            if target not in serving:
                raise TidemillError(f"the owner {target} does not serve: is its worker running?")
            quack.check_locally(command)  # the reason in one line, not "Authorization failed"
            arguments += ["-bail", "-c", on_owner(str(target), command)]
    sys.stdout.flush()
    os.execv(shell, arguments)


def write_live_catalog(
    config: TidemillConfig, everyone: dict[str, tuple[TidemillConfig, list[str]]] | None = None
) -> tuple[Path, list[str]]:
    """Write `<state>/catalog.sql`, the script that attaches every serving owner over
    Quack (warehouse/serving/shell.py); returns it and the names of the owners in it.
    Raises TidemillError when no owner serves."""
    from tidemill.cli.access import read_live
    from tidemill.warehouse.serving import quack

    owners = []
    for name, (owner, _) in (everyone or layout.owners(config)).items():
        if not key_file(owner.state_dir, "quack").exists():
            continue
        endpoint = quack.read_endpoint(owner.state_dir, get_token(owner.state_dir, "quack"))
        if endpoint is None or not quack.listening(endpoint):
            continue
        tables = read_live(owner.state_dir, TABLES_SQL).rows
        owners.append(Owner(name, endpoint, [(str(s), str(t)) for s, t in tables]))
    if not owners:
        raise TidemillError(
            f"no owner serves {config.state_dir} live: start `tidemill up` (or `make run`), "
            "or read the file with `tidemill query` while nothing runs"
        )
    path = write_init(layout.catalog_file(config.state_dir), init_sql(owners))
    return path, [owner.name for owner in owners]


def _snapshot_init(
    config: TidemillConfig,
    everyone: dict[str, tuple[TidemillConfig, list[str]]],
    first: str | None,
) -> Path:
    """The init script that attaches each owner's published snapshot (with its key when
    encrypted), `first`'s in use."""
    snapshots: list[tuple[str, Path, str | None]] = []
    for name, (owner, _) in sorted(everyone.items(), key=lambda item: item[0] != first):
        published = snapshot_path(owner.state_dir)
        if not published.exists():
            continue
        copy = published.resolve()
        key = key_for(copy, owner.state_dir)
        snapshots.append(("snapshot" if name == "live" else name, copy, key.text if key else None))
    if not snapshots:
        raise TidemillError(
            f"no snapshot published in {config.state_dir}: set [serving] "
            "snapshot_every_seconds above 0, or use `tidemill sql` on the live warehouse"
        )
    return write_init(config.state_dir / "run" / "snapshot-init.sql", snapshot_sql(snapshots))
