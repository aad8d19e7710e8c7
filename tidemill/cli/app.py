"""The `tidemill` command: every command in the order `--help` lists them, and how a
failure ends (`main`).

Each command group lives in its own module beside this one. Commands import the flows
and deployments they drive inside their bodies: those pull in Prefect (about a second),
which `tidemill query` or `--help` should not pay for.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tidemill import private
from tidemill.cli import (
    backfill,
    export,
    keys,
    models,
    privacy,
    quarantine,
    query,
    run,
    session,
    sql,
    stack,
)
from tidemill.cli.output import err
from tidemill.errors import TidemillError
from tidemill.settings import get_settings

app = typer.Typer(
    name="tidemill",
    help="Real-time analytics and online ML: micro-batches into DuckDB, models that learn "
    "every few seconds, scheduled and watched in Prefect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
models_app = typer.Typer(
    help="Inspect model versions (registry rows and artifacts).", no_args_is_help=True
)
quarantine_app = typer.Typer(
    help="Read quarantined records and put corrected ones back (raw.P_quarantine).",
    no_args_is_help=True,
)
keys_app = typer.Typer(
    help="The state folder's encryption key (keys/encryption.key or TIDEMILL_ENCRYPTION_KEY).",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(keys_app, name="keys")

app.command()(run.run)
app.command()(query.query)
app.command()(sql.sql)
app.command()(sql.serving)
app.command()(query.status)
app.command()(query.report)
models_app.command("list")(models.models_list)
models_app.command("show")(models.models_show)
models_app.command("promote")(models.models_promote)
models_app.command("rollback")(models.models_rollback)
app.command("replay-model")(models.replay_model)
models_app.command("sign")(models.models_sign)
app.command()(privacy.erase)
app.command()(models.maintain)
app.command()(backfill.backfill)
app.command()(export.export)
keys_app.command("rotate")(keys.keys_rotate)
quarantine_app.command("list")(quarantine.quarantine_list)
quarantine_app.command("show")(quarantine.quarantine_show)
quarantine_app.command("readmit")(quarantine.quarantine_readmit)
app.command()(stack.up)
app.command()(stack.down)
app.command()(stack.worker)
app.command()(stack.replay)


@app.callback()
def _config_file(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="TIDEMILL_CONFIG",
            help="Pipeline config file (TOML). Default: ./tidemill.toml.",
            show_default=False,
        ),
    ] = None,
) -> None:
    session.use(config or get_settings().config)


def main() -> None:
    """Console-script entry: an expected failure (TidemillError) or a usage error prints
    one line and exits 2; anything else is a bug and keeps its traceback. What the
    command and every process it starts create is private to this user (umask 077)."""
    private.restrict_umask()
    try:
        app(prog_name="tidemill", standalone_mode=False)
    except typer.TyperException as error:  # Typer's usage and parameter errors
        context = getattr(error, "ctx", None)
        message = error.format_message()
        if context is not None and message == context.get_help():  # bare command: its help
            err.print(message, highlight=False, markup=False)
            sys.exit(0)
        if context is not None:
            message = message.replace("Value error, ", "")
            message += f" (see `{context.command_path} --help`)"
        err.print(f"error: {message}", highlight=False, markup=False)
        sys.exit(2)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except TidemillError as error:
        err.print(f"error: {error}", highlight=False, markup=False)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
