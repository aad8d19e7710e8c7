"""`tidemill up`, `down`, `worker` and `replay`: the local stack and its processes."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from tidemill import layout
from tidemill.cli import session
from tidemill.cli.output import err, out
from tidemill.cli.sql import write_live_catalog
from tidemill.config.fields import deployment_name
from tidemill.errors import TidemillError
from tidemill.settings import get_settings


def up(
    port: Annotated[int, typer.Option("--port", help="Prefect server/UI port.")] = 4200,
    speed: Annotated[
        float,
        typer.Option("--speed", min=1, help="Replay the flights at this many times real time."),
    ] = 1800,
    no_replay: Annotated[
        bool, typer.Option("--no-replay", help="Do not start the replayer.")
    ] = False,
    detach: Annotated[
        bool, typer.Option("--detach", help="Return once started; stop later with `tidemill down`.")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="Spread the pipelines over N worker processes, each owning its own "
            "warehouse file (kept for this state folder once chosen).",
        ),
    ] = 1,
) -> None:
    """Start the platform: Prefect server + UI, the worker, and the flights replayer.

    The worker owns the warehouse, registers one deployment per pipeline (every
    `every_seconds`, concurrency 1) and runs their flow runs in-process. Stays in the
    foreground until Ctrl-C, then stops everything it started.
    """
    from tidemill.deployments.stack import stack

    config = session.config()
    err.print("starting the Prefect server, the worker and the replayer …")
    try:
        started = stack.up(config, port=port, speed=None if no_replay else speed, workers=workers)
    except stack.StackError as error:
        stack.down(config)
        raise TidemillError(str(error)) from None
    first = started.pipelines[0] if started.pipelines else "PIPELINE"
    duckdb_cli = Path(sys.executable).with_name("duckdb")
    try:
        catalog, _ = write_live_catalog(config)
    except TidemillError:  # no owner serves yet: `tidemill sql` writes it later
        catalog = layout.catalog_file(config.state_dir)
    routed = f" -p {first}" if layout.read(config.state_dir) else ""
    out.print(
        f"\n[bold green]tidemill is running[/bold green] (state in {config.state_dir}; "
        f"workers: {', '.join(started.worker_pids)})\n"
        f"  Prefect UI    {started.ui_url}  (Deployments → micro-batch/{deployment_name(first)})\n"
        f'  SQL           tidemill sql{routed} -c "SELECT count(*) AS rows, max(ts) FROM raw.{first}"\n'
        f"  duckdb shell  tidemill sql   (or {duckdb_cli} -init {catalog}: every owner, live)\n"
        f"  models        tidemill models list {first}\n"
        f"  status        tidemill status\n"
        f"  logs          {stack.logs_dir(config.state_dir)}/\n"
    )
    if detach:
        return
    out.print("Ctrl-C stops everything.")
    reason = None
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: a shell may
        signal.signal(signum, _interrupt)  # start us with it ignored (background, no job control)
    try:
        reason = stack.watch(config, started)
    except KeyboardInterrupt:
        pass
    finally:
        err.print("stopping …")
        stopped = stack.down(config)
        err.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    if reason:
        raise TidemillError(reason)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def down() -> None:
    """Stop the replayer, the worker and the Prefect server of this state folder."""
    from tidemill.deployments.stack import stack

    stopped = stack.down(session.config())
    err.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


def worker(
    pipeline: Annotated[
        list[str] | None,
        typer.Option("--pipeline", "-p", help="Serve only these pipelines (repeatable)."),
    ] = None,
    as_worker: Annotated[
        str | None,
        typer.Option(
            "--as", help="Be worker W of the state folder's layout (`tidemill up --workers N`)."
        ),
    ] = None,
) -> None:
    """Run the long-lived worker (what `tidemill up` starts): own the warehouse, register
    the deployments, execute their scheduled runs in this process until SIGTERM."""

    from tidemill.deployments.stack.prefect_server import server_env

    main = session.config()
    if "PREFECT_API_URL" not in os.environ:
        os.environ.update(server_env(main.state_dir, get_settings().prefect_port))
    config = layout.worker_config(main, as_worker) if as_worker else main
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from tidemill.deployments.worker import run_worker

    run_worker(config, pipeline)


def replay(
    dataset: Annotated[
        str, typer.Argument(help="Data set to replay: flights, transactions or sensors.")
    ],
    speed: Annotated[
        float, typer.Option("--speed", min=1, help="Simulated seconds per real second.")
    ] = 1800,
    max_files: Annotated[
        int | None, typer.Option("--max-files", min=1, help="Stop after N files.")
    ] = None,
    tick: Annotated[float, typer.Option("--tick", min=0.05, help="Seconds between files.")] = 1.0,
) -> None:
    """Write a packaged data set (the 2013 NYC flights, or the seeded synthetic card
    transactions) into its pipeline's landing folder as small CSV files, at SPEED times
    their event times; or publish machine-sensor readings (12 sensors, 4 faulty) to the
    `sensors` pipeline's Redis stream, about 50 a second. Resumes where it stopped."""
    from tidemill.deployments.replay.serve import serve_replay

    serve_replay(
        session.config(), dataset, speed, tick_seconds=tick, max_files=max_files, say=err.print
    )
