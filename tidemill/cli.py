"""The `tidemill` command line.

Every command reads the pipeline config (`--config PATH`, else $TIDEMILL_CONFIG, else
./tidemill.toml). Errors a person can fix print ONE line and exit 2; no tracebacks.
"""

from __future__ import annotations

import csv
import json
import signal
import sys
import threading
import time
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tidemill.config import TidemillConfig, load_config
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
app.add_typer(models_app, name="models")

# Tables keep their columns when piped (rich would otherwise assume 80 columns).
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


_state: dict[str, Any] = {}


@app.callback()
def _main(
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
    _state["config_path"] = config or get_settings().config


def _config() -> TidemillConfig:
    if "config" not in _state:
        _state["config"] = load_config(Path(_state["config_path"]))
    config: TidemillConfig = _state["config"]
    return config


def _owner(pipeline: str) -> TidemillConfig:
    """The config of the worker that owns `pipeline` (tidemill/layout.py)."""
    from tidemill import layout

    return layout.owner_config(_config(), pipeline)


# ---------------------------------------------------------------- run


@app.command()
def run(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name from the config.")],
    drain: Annotated[
        bool,
        typer.Option("--drain", help="Process everything available, then exit with a summary."),
    ] = False,
    max_batches: Annotated[
        int | None,
        typer.Option("--max-batches", min=1, help="Stop after this many committed batches."),
    ] = None,
) -> None:
    """Run micro-batches of PIPELINE in this process (no Prefect needed).

    Without --drain it runs one batch every `every_seconds` until Ctrl-C. While it runs,
    `tidemill query` reaches the warehouse through this process.
    """
    from tidemill.deployments import owner
    from tidemill.flows.cycle import BatchFailed, run_cycle
    from tidemill.flows.runtime import Runtime

    config = _owner(pipeline)
    spec = config.pipeline(pipeline)
    runtime = Runtime.open(config)
    service = owner.serve(runtime)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    reports = []
    started = time.perf_counter()
    try:
        if drain:
            # nobody needs a snapshot per batch while draining: one every 5 s, one at the end
            runtime.snapshot_every_seconds = max(runtime.snapshot_every_seconds, 5.0)
            reports = _drain(runtime, pipeline, max_batches)
        else:
            err.print(f"running {pipeline} every {spec.every_seconds:g}s; Ctrl-C stops")
            while not stop.is_set():
                tick = time.monotonic()
                try:
                    report = run_cycle(runtime, pipeline)
                except BatchFailed as failure:
                    err.print(f"[red]{failure}[/red]")
                    report = failure.report
                if report.status == "committed":
                    reports.append(report)
                    err.print(_one_line(report))
                if max_batches and len(reports) >= max_batches:
                    break
                stop.wait(max(0.0, spec.every_seconds - (time.monotonic() - tick)))
    except KeyboardInterrupt:
        err.print("stopped")
    finally:
        service.close()
        runtime.close()
    _summary(pipeline, reports, time.perf_counter() - started)


def _drain(runtime: Any, pipeline: str, max_batches: int | None) -> list[Any]:
    from tidemill.flows.cycle import BatchFailed, run_cycle

    reports = []
    failures = 0
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(f"draining {pipeline}", total=None)
        done = 0
        while True:
            try:
                report = run_cycle(runtime, pipeline, drain=True)
            except BatchFailed as failure:
                failures += 1
                err.print(f"[red]{failure}[/red]")
                if failures >= 3:
                    raise TidemillError(
                        f"{pipeline}: 3 batches failed in a row; see `tidemill status`"
                    ) from None
                continue
            failures = 0
            if report.status == "waiting":
                raise TidemillError(
                    f"{pipeline}: no landing files match {runtime.config.pipeline(pipeline).source.path}"
                )
            if report.status != "committed":
                break
            reports.append(report)
            done += report.rows_in
            progress.update(task, completed=done, total=done + report.backlog)
            if max_batches and len(reports) >= max_batches:
                break
    return reports


def _one_line(report: Any) -> str:
    metrics = " ".join(f"{k}={v:.4f}" for k, v in report.metrics.items())
    return (
        f"batch {report.batch_id}: {report.rows_in} in, {report.rows_accepted} accepted, "
        f"{report.rows_quarantined} quarantined, learned {report.rows_learned} -> "
        f"v{report.model_version} {metrics}"
    )


def _summary(pipeline: str, reports: list[Any], seconds: float) -> None:
    table = Table(title=f"{pipeline}: {len(reports)} batches in {seconds:.1f}s")
    for column in ("batches", "rows in", "accepted", "quarantined", "learned", "model", "rows/s"):
        table.add_column(column, justify="right")
    rows_in = sum(r.rows_in for r in reports)
    table.add_row(
        str(len(reports)),
        str(rows_in),
        str(sum(r.rows_accepted for r in reports)),
        str(sum(r.rows_quarantined for r in reports)),
        str(sum(r.rows_learned for r in reports)),
        f"v{reports[-1].model_version}" if reports and reports[-1].model_version else "-",
        f"{rows_in / seconds:,.0f}" if seconds > 0 else "-",
    )
    out.print(table)
    scored = [r for r in reports if r.metrics]
    if scored:
        names = sorted({m for r in scored for m in r.metrics})
        means = {m: sum(r.metrics.get(m, 0.0) for r in scored) / len(scored) for m in names}
        out.print(
            "prequential (mean over batches): "
            + ", ".join(f"{m}={v:.4f}" for m, v in means.items())
        )


# ---------------------------------------------------------------- query


def _cell(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _print_result(
    columns: list[str], rows: list[tuple[Any, ...]], fmt: Format, title: str | None = None
) -> None:
    if fmt is Format.json:
        sys.stdout.write(
            json.dumps([dict(zip(columns, map(_cell, r), strict=True)) for r in rows], default=str)
            + "\n"
        )
    elif fmt is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_cell(v) for v in r] for r in rows])
    else:
        table = Table(title=title)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*["NULL" if v is None else str(_cell(v)) for v in row])
        out.print(table)


@app.command()
def query(
    sql: Annotated[
        str, typer.Argument(help="Read-only SQL (SELECT, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN).")
    ],
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    snapshot: Annotated[
        bool,
        typer.Option("--snapshot", help="Read the published snapshot, not the live warehouse."),
    ] = False,
    pipeline: Annotated[
        str | None,
        typer.Option(
            "--pipeline",
            "-p",
            help="Ask the worker that owns this pipeline (needed with `up --workers N`).",
        ),
    ] = None,
) -> None:
    """Run read-only SQL on the warehouse, also while the platform is writing it.

    The query runs inside the owning process when one is running (`tidemill up` or
    `tidemill run`), else on the file itself, else on the published snapshot.
    Tables: raw.P, raw.P_quarantine, clean.P, agg.P_*, ml.P_predictions,
    ml.model_versions, ml.batch_metrics, _batches, _watermarks, _files.
    With several workers each owns its pipelines' warehouse: name one with --pipeline,
    or open every snapshot at once with `duckdb -init .tidemill/catalog.sql`.
    """
    from tidemill import layout
    from tidemill.access import read_sql

    config = _config()
    workers = layout.read(config.state_dir)
    if pipeline is None and workers:
        owners = "; ".join(f"{w}: {', '.join(names)}" for w, names in workers.items())
        raise TidemillError(
            f"{len(workers)} workers share {config.state_dir} ({owners}): add --pipeline P "
            f"to ask the one that owns P, or run duckdb -init {layout.catalog_file(config.state_dir)}"
        )
    owner = _owner(pipeline) if pipeline else config
    result, _ = read_sql(owner.state_dir, sql, snapshot=snapshot)
    _print_result(result.columns, result.rows, fmt)


# ---------------------------------------------------------------- status and models


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Pipelines, their last batch, rows, quarantine counts, backlog and lag."""
    from tidemill.access import NothingToRead, read_sql
    from tidemill.warehouse.reports import known_pipelines_sql, status_sql

    config = _config()
    owners: dict[Path, TidemillConfig] = {}
    for name in config.pipelines:
        owner = _owner(name)
        owners.setdefault(owner.state_dir, owner)
    columns: list[str] = []
    rows: list[Any] = []
    sources = set()
    missing: list[NothingToRead] = []
    for owner in owners.values():
        try:
            known, _ = read_sql(owner.state_dir, known_pipelines_sql())
        except NothingToRead as error:
            missing.append(error)
            continue
        names = [r[0] for r in known.rows if r[0] in owner.pipelines]
        if names:
            result, source = read_sql(owner.state_dir, status_sql(names))
            columns, rows = result.columns, [*rows, *result.rows]
            sources.add(source)
    if len(missing) == len(owners):
        raise missing[0]
    if not rows:
        raise TidemillError(
            "no pipeline has run yet: try `tidemill run PIPELINE --drain` or `make run`"
        )
    source = ", ".join(sorted(sources))
    _print_result(
        columns,
        rows,
        Format.json if as_json else Format.table,
        title=f"tidemill status (read via {source})",
    )


@app.command()
def report(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    out_path: Annotated[
        Path, typer.Option("--out", help="Where to write the page.", dir_okay=False)
    ] = Path("report.html"),
) -> None:
    """Write one self-contained HTML page of PIPELINE: prequential metrics per candidate
    with drift events, rows and quarantine rate per batch, latency by step, the model
    registry and the quarantine reasons. It opens in any browser, without a server."""
    from tidemill.report import report_page

    if not out_path.parent.is_dir():  # before minutes of drawing, not after
        raise TidemillError(f"cannot write {out_path}: folder {out_path.parent} does not exist")
    page = report_page(_owner(pipeline).state_dir, pipeline)
    try:
        out_path.write_text(page, encoding="utf-8")
    except OSError as error:
        raise TidemillError(f"cannot write {out_path}: {error.strerror}") from None
    out.print(f"wrote {out_path} ({len(page.encode()) / 1024:.0f} KiB)")


@models_app.command("list")
def models_list(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Newest N versions.")] = 20,
) -> None:
    """Model versions of PIPELINE, newest first: lineage, rows seen, hash, metrics."""
    from tidemill.access import read_sql
    from tidemill.warehouse.reports import models_sql

    result, _ = read_sql(_owner(pipeline).state_dir, models_sql(pipeline))
    rows = result.rows[:limit]
    if as_json:
        _print_result(result.columns, rows, Format.json)
        return
    table = Table(title=f"{pipeline}: {len(result.rows)} model versions")
    for column in (
        "version",
        "parent",
        "candidate",
        "status",
        "batch",
        "batches",
        "rows seen",
        "created",
        "sha256",
        "metrics",
    ):
        table.add_column(column)
    index = {c: i for i, c in enumerate(result.columns)}
    for row in rows:
        metrics = json.loads(row[index["metrics_json"]])
        table.add_row(
            str(row[index["version"]]),
            str(row[index["parent_version"]] or "-"),
            row[index["candidate"]],
            row[index["status"]],
            str(row[index["batch_id"]]),
            str(row[index["batches_seen"]]),
            str(row[index["rows_seen"]]),
            str(_cell(row[index["created_at"]]))[:19],
            row[index["sha256"]][:12],
            " ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
        )
    out.print(table)


@models_app.command("show")
def models_show(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    version: Annotated[
        int | None, typer.Argument(help="Version (default: the champion).", min=1)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Everything recorded about one model version (default: the champion)."""
    from tidemill.access import read_sql
    from tidemill.warehouse.reports import models_sql

    result, _ = read_sql(_owner(pipeline).state_dir, models_sql(pipeline, version))
    rows = result.rows
    if version is None:
        rows = [r for r in rows if r[result.columns.index("status")] == "champion"]
    if not rows:
        what = f"version {version}" if version else "champion"
        raise TidemillError(f"{pipeline} has no {what} yet (see `tidemill models list {pipeline}`)")
    record = {c: _cell(v) for c, v in zip(result.columns, rows[0], strict=True)}
    for key in ("params_json", "library_versions", "metrics_json"):
        record[key.removesuffix("_json")] = json.loads(record.pop(key))
    if as_json:
        sys.stdout.write(json.dumps(record, default=str) + "\n")
        return
    table = Table(title=f"{pipeline} v{record['version']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in record.items():
        if key == "feature_names":
            value = f"{len(value)}: " + ", ".join(value[:12]) + (" …" if len(value) > 12 else "")
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    out.print(table)


def _actor() -> str:
    import getpass
    import socket

    return f"{getpass.getuser()}@{socket.gethostname()}"


def _change_champion(pipeline: str, version: int | None, action: str, reason: str) -> None:
    from tidemill.access import command

    config = _owner(pipeline)
    done = command(
        config,
        "champion",
        pipeline=pipeline,
        version=version,
        action=action,
        actor=_actor(),
        reason=reason,
    )
    out.print(f"{pipeline}: v{done['version']} is the champion ({done['rows_seen']} rows seen)")


@models_app.command("promote")
def models_promote(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    version: Annotated[int, typer.Argument(help="Version to make the champion.", min=1)],
    reason: Annotated[
        str, typer.Option("--reason", "-r", help="Why (kept in ml.model_events).")
    ] = "",
) -> None:
    """Make VERSION the champion of PIPELINE: the next batch is scored and learned by it.

    Recorded in ml.model_events with who, when and why. The artifact's SHA-256 is checked
    before anything changes.
    """
    _change_champion(pipeline, version, "promote", reason or "promoted by hand")


@models_app.command("rollback")
def models_rollback(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    to: Annotated[int | None, typer.Option("--to", min=1, help="Version to return to.")] = None,
    reason: Annotated[
        str, typer.Option("--reason", "-r", help="Why (kept in ml.model_events).")
    ] = "",
) -> None:
    """Return PIPELINE to the champion before the last promotion (or its parent, or --to).

    Recorded in ml.model_events; takes effect on the next batch.
    """
    _change_champion(pipeline, to, "rollback", reason or "rolled back by hand")


@app.command("replay-model")
def replay_model(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    to: Annotated[int, typer.Option("--to", min=1, help="Version to rebuild.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Rebuild model version --to from the raw rows of its batches and prove it equal.

    Follows the version's lineage from a fresh model of its candidate, learning each
    batch again with the features it read at the time, and compares the SHA-256 of what
    the rebuilt model learned with the registry row and the artifact file. Exit code 1
    when they differ.
    """
    from tidemill.access import command

    config = _owner(pipeline)
    report = command(config, "replay_model", pipeline=pipeline, version=to)
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        table = Table(title=f"{pipeline} v{to} replayed", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        for key in ("candidate", "batches", "rows_learned", "stored_sha256", "rebuilt_sha256"):
            table.add_row(key, str(report[key]))
        table.add_row("artifact_sha256", str(report["artifact_sha256"] or "pruned"))
        out.print(table)
        verdict = "identical" if report["equal"] else "DIFFERENT"
        out.print(f"{pipeline} v{to}: rebuilt model is {verdict} to the stored one")
    if not report["equal"]:
        raise typer.Exit(1)


@models_app.command("sign")
def models_sign(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    resign: Annotated[
        bool, typer.Option("--resign", help="Sign every kept version again (after a key change).")
    ] = False,
) -> None:
    """Sign the artifacts of PIPELINE's versions that carry no signature yet.

    An artifact is only unpickled when its registry row carries the HMAC the artifact key
    makes of it. Versions written before signatures existed are refused until you vouch
    for their files with this command (each file must still match its row's SHA-256; none
    is unpickled). After rotating TIDEMILL_ARTIFACT_KEY, run it with --resign.
    """
    from tidemill.access import command

    config = _owner(pipeline)
    done = command(config, "sign", pipeline=pipeline, resign=resign)
    out.print(f"{pipeline}: signed {len(done['signed'])} versions")
    for version, why in done["refused"].items():
        err.print(f"  v{version} left unsigned: {why}", highlight=False, markup=False)


@app.command()
def erase(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    subject: Annotated[
        str,
        typer.Option(
            "--subject",
            help="The data subject's value in the pipeline's `subject` column, as the source "
            "had it (an email, a customer id); hashed columns are matched by its pseudonym.",
        ),
    ],
    digest_only: Annotated[
        bool,
        typer.Option(
            "--digest-only",
            help="Erase nothing: print the subject's digest, which the erasure flow "
            "(erasure/PIPELINE in the Prefect UI) takes instead of the value.",
        ),
    ] = False,
) -> None:
    """Erase a data subject from PIPELINE: rows, aggregates and what models learned.

    Deletes the subject's rows from raw, clean, quarantine, the inbox and the predictions,
    recomputes the aggregate windows and lag histories they counted in, and relearns every
    model lineage that learned them from the version before their first batch (replay),
    deleting the artifacts that held them. Then the warehouse file is rewritten (DuckDB
    leaves deleted values in freed blocks) and the snapshot published again. An audit row
    in _erasures keeps only an HMAC of the value. The value is sent to the owning process,
    never logged or stored.
    """
    from tidemill.access import command
    from tidemill.keys import get_key
    from tidemill.tasks.pii import subject_digest, subject_value

    config = _owner(pipeline)
    declared = config.pipeline(pipeline)
    if declared.subject is None:
        raise TidemillError(
            f"pipeline {pipeline} declares no `subject` column: set pipelines.{pipeline}.subject "
            "to the column that names a data subject"
        )
    key = get_key(config.state_dir, "pii")
    stored = subject_value(declared, subject, key)
    if digest_only:
        out.print(subject_digest(key, stored), highlight=False)
        return
    done = command(config, "erase", pipeline=pipeline, stored_value=stored, actor=_actor())
    out.print(
        f"{pipeline}: erasure {done['erasure_id']}: removed {done['rows_raw']} rows "
        f"({done['rows_quarantine']} quarantined, {done['rows_inbox']} waiting, "
        f"{done['rows_predictions']} predictions), recomputed {done['windows_recomputed']} "
        f"windows, rebuilt {done['versions_rebuilt']} model versions, deleted "
        f"{done['artifacts_deleted']} artifacts"
        + ("; rewrote the warehouse file and snapshot" if done["file_rewritten"] else "")
    )


@app.command()
def maintain(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
) -> None:
    """Prune old model artifacts of PIPELINE now and remove orphan files.

    Keeps the champion and challengers, every promoted or rolled-back version, the last
    50 of each candidate, one per hour for 48 h and one per day for 30 d; registry rows
    stay forever, with artifact_pruned_at set. Files no row points at (a batch that
    crashed before committing) are removed once 10 minutes old. The worker also runs
    this every maintenance_every_seconds as the maintenance/PIPELINE deployment.
    """
    from tidemill.access import command

    config = _owner(pipeline)
    done = command(config, "maintain", pipeline=pipeline, actor=_actor())
    out.print(
        f"{pipeline}: pruned {done['artifacts_pruned']} artifacts, kept {done['artifacts_kept']}, "
        f"removed {done['orphans_removed']} orphans and {done['temp_files_removed']} unfinished "
        f"writes, freed {int(done['bytes_freed']) / 2**20:.1f} MiB"
    )


def _moment(text: str, option: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise TidemillError(
            f"{option} {text!r} is not an ISO date or time (e.g. 2013-01-05 or 2013-01-05T06:00Z)"
        ) from None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


@app.command()
def backfill(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    start: Annotated[
        str,
        typer.Option(
            "--start",
            help="Window start, inclusive: ISO date/time (UTC unless an offset is given).",
        ),
    ],
    end: Annotated[str, typer.Option("--end", help="Window end, exclusive: ISO date/time.")],
    retrain: Annotated[
        bool,
        typer.Option(
            "--retrain",
            help="Also train a candidate model on the window (the champion is untouched).",
        ),
    ] = False,
) -> None:
    """Re-read PIPELINE's source for records with event time in [start, end) and insert the
    missing ones; recompute the aggregate windows they touch.

    With the platform running it becomes a run of the backfill/PIPELINE deployment (visible
    in the Prefect UI) executed by the worker between live batches; otherwise it runs here.
    Running it twice changes nothing. A second backfill of a pipeline waits for the first.
    """
    from tidemill.deployments.query_service import OwnerUnavailable, call_owner

    config = _owner(pipeline)
    first, last = _moment(start, "--start"), _moment(end, "--end")
    if first >= last:
        raise TidemillError(f"--start {start} must be before --end {end}")
    payload = {
        "op": "backfill",
        "pipeline": pipeline,
        "start": first.isoformat(),
        "end": last.isoformat(),
        "retrain": retrain,
    }
    try:
        started = call_owner(config.state_dir, payload)
    except OwnerUnavailable:
        _backfill_here(config, pipeline, first, last, retrain)
        return
    err.print(
        f"started flow run {started['flow_run_name']} of deployment backfill/{pipeline.replace('_', '-')}"
    )
    _follow_backfill(config, f"prefect flow run {started['flow_run_id']}")


def _backfill_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("records"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def _backfill_here(
    config: TidemillConfig, pipeline: str, start: datetime, end: datetime, retrain: bool
) -> None:
    from tidemill.flows.backfill_window import run_backfill
    from tidemill.flows.runtime import Runtime

    runtime = Runtime.open(config)
    try:
        with _backfill_progress() as progress:
            task = progress.add_task(f"backfilling {pipeline}", total=None)
            report = run_backfill(
                runtime,
                pipeline,
                start,
                end,
                retrain=retrain,
                requested_by=_actor(),
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    finally:
        runtime.close()
    _backfill_summary(report.backfill_id, config)


def _follow_backfill(config: TidemillConfig, requested_by: str, timeout: float = 3600) -> None:
    from tidemill.access import read_sql

    sql = (
        "SELECT backfill_id, status, rows_in_window, rows_done, error FROM _backfills "
        f"WHERE requested_by = '{requested_by}'"
    )
    deadline = time.monotonic() + timeout
    with _backfill_progress() as progress:
        task = progress.add_task("waiting for the worker", total=None)
        while time.monotonic() < deadline:
            rows = read_sql(config.state_dir, sql)[0].rows
            if rows:
                backfill_id, state, total, done, error = rows[0]
                progress.update(
                    task, description=f"backfill {backfill_id}", completed=done, total=total or None
                )
                if state != "running":
                    break
            time.sleep(0.5)
        else:
            raise TidemillError("the backfill did not finish in time; see the Prefect UI")
    if state == "failed":
        raise TidemillError(f"backfill {backfill_id} failed: {error}")
    _backfill_summary(backfill_id, config)


def _backfill_summary(backfill_id: int, config: TidemillConfig) -> None:
    from tidemill.access import read_sql

    result, _ = read_sql(
        config.state_dir,
        "SELECT backfill_id, pipeline, start_at, end_at, status, rows_in_window, rows_inserted, "
        f"rows_present, rows_quarantined, windows_recomputed, candidate_version FROM _backfills WHERE backfill_id = {int(backfill_id)}",
    )
    _print_result(result.columns, result.rows, Format.table, title="backfill")


# ---------------------------------------------------------------- quarantine

quarantine_app = typer.Typer(
    help="Read quarantined records and put corrected ones back (raw.P_quarantine).",
    no_args_is_help=True,
)
app.add_typer(quarantine_app, name="quarantine")


def _read(state_dir: Path, sql: str) -> list[dict[str, Any]]:
    from tidemill.access import read_sql

    result, _ = read_sql(state_dir, sql)
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def _short(text: Any, width: int = 80) -> str:
    flat = " ".join(str(text).split()) if text is not None else "NULL"
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@quarantine_app.command("list")
def quarantine_list(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    reason: Annotated[
        str | None, typer.Option("--reason", help="Only records whose reason contains TEXT.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Recent records to show.")] = 20,
    include_readmitted: Annotated[
        bool, typer.Option("--all", help="Include records already re-admitted.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Quarantined records of PIPELINE: counts by kind of reason and file, then the most
    recent records with their ids (for `show` and `readmit`)."""
    from tidemill.warehouse.quarantine import groups_sql, recent_sql, totals_sql

    state_dir = _owner(pipeline).state_dir
    totals = _read(state_dir, totals_sql(pipeline))[0]
    groups = _read(state_dir, groups_sql(pipeline, reason, include_readmitted))
    recent = _read(state_dir, recent_sql(pipeline, reason, limit, include_readmitted))
    if as_json:
        report = {"pipeline": pipeline, **totals, "groups": groups, "recent": recent}
        sys.stdout.write(json.dumps(report, default=_cell) + "\n")
        return
    open_rows = totals["quarantined"] - totals["readmitted"]
    out.print(
        f"{pipeline}: {open_rows} quarantined records waiting, {totals['readmitted']} re-admitted"
    )
    table = Table(title="by reason and file")
    for column in ("reason", "file", "rows", "re-admitted", "last"):
        table.add_column(column, overflow="fold")
    for group in groups:
        table.add_row(
            group["reason"],
            Path(group["file"]).name,
            str(group["rows"]),
            str(group["readmitted"]),
            str(_cell(group["last_at"]))[:19],
        )
    out.print(table)
    table = Table(title=f"latest {len(recent)} (tidemill quarantine show {pipeline} ID)")
    for column in ("id", "batch", "file", "line", "reason", "raw text", "re-admitted"):
        table.add_column(column, overflow="fold")
    for row in recent:
        table.add_row(
            str(row["id"]),
            str(row["batch_id"]),
            Path(row["file"]).name,
            str(row["line"]),
            _short(row["reason"]),
            _short(row["raw_text"], 60),
            str(_cell(row["readmitted_at"]))[:19] if row["readmitted_at"] else "-",
        )
    out.print(table)


@quarantine_app.command("show")
def quarantine_show(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    quarantine_id: Annotated[int, typer.Argument(metavar="ID", help="Quarantine row id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One quarantined record: its file and line, every reason, its raw text, the fields
    it splits into, and whether it was re-admitted."""
    from tidemill.config import FilesSource
    from tidemill.tasks.parse import record_fields
    from tidemill.warehouse.quarantine import record_sql

    owner = _owner(pipeline)
    spec = owner.pipeline(pipeline)
    rows = _read(owner.state_dir, record_sql(pipeline, quarantine_id))
    if not rows:
        raise TidemillError(
            f"{pipeline} has no quarantined record {quarantine_id} "
            f"(see `tidemill quarantine list {pipeline}`)"
        )
    record = rows[0]
    header = str(record.pop("header") or "").split(",")
    fmt = spec.source.format if isinstance(spec.source, FilesSource) else "ndjson"
    required = [c for c in (spec.key, spec.event_time, *(spec.features or []), spec.target) if c]
    try:
        fields: dict[str, Any] = record_fields(str(record["raw_text"]), fmt, header, required)
    except ValueError as error:
        fields = {"(does not split into fields)": str(error)}
    record["reasons"] = str(record.pop("reason")).split("; ")
    record["fields"] = fields
    if as_json:
        sys.stdout.write(json.dumps(record, default=_cell) + "\n")
        return
    table = Table(title=f"{pipeline} quarantine {quarantine_id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key in ("batch_id", "file", "line", "quarantined_at"):
        table.add_row(key, str(_cell(record[key])))
    for number, text in enumerate(record["reasons"], start=1):
        table.add_row(f"reason {number}", text)
    table.add_row("raw text", str(record["raw_text"]))
    for name, value in fields.items():
        table.add_row(f"  {name}", "NULL" if value is None else repr(value))
    if record["readmitted_at"]:
        changed = record["columns_changed"] or "nothing changed"
        table.add_row(
            "re-admitted",
            f"{_cell(record['readmitted_at'])} by {record['readmitted_by']} ({changed})",
        )
    else:
        table.add_row("re-admitted", f"no: tidemill quarantine readmit {pipeline} {quarantine_id}")
    out.print(table)


def _changes(assignments: list[str]) -> dict[str, str | None]:
    changes: dict[str, str | None] = {}
    for assignment in assignments:
        column, sep, value = assignment.partition("=")
        if not sep or not column.strip():
            raise TidemillError(f"--set expects COLUMN=VALUE (got {assignment!r})")
        changes[column.strip()] = value or None
    return changes


def _fixes_from_file(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "quarantine_id" not in reader.fieldnames:
                raise TidemillError(
                    f"{path}: needs a quarantine_id column naming the record each line corrects"
                )
            fixes = []
            for number, row in enumerate(reader, start=2):
                try:
                    quarantine_id = int(row.pop("quarantine_id") or "")
                except ValueError:
                    raise TidemillError(f"{path}:{number}: quarantine_id is not a number") from None
                fixes.append(
                    {"id": quarantine_id, "changes": {k: v or None for k, v in row.items()}}
                )
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise TidemillError(f"{path}: {error}") from None
    return fixes


def _parts(fixes: list[dict[str, Any]], limit: int = 256 << 10) -> list[list[dict[str, Any]]]:
    parts: list[list[dict[str, Any]]] = [[]]
    size = 0
    for fix in fixes:
        length = len(json.dumps(fix))
        if parts[-1] and size + length > limit:
            parts.append([])
            size = 0
        parts[-1].append(fix)
        size += length
    return parts


@quarantine_app.command("readmit")
def quarantine_readmit(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    ids: Annotated[
        list[int] | None, typer.Argument(metavar="[ID]...", help="Quarantine row ids.")
    ] = None,
    assignments: Annotated[
        list[str] | None,
        typer.Option(
            "--set", metavar="COLUMN=VALUE", help="Corrected value (repeatable; empty: NULL)."
        ),
    ] = None,
    fixed: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="CSV of corrected records: a quarantine_id column and the corrected columns.",
        ),
    ] = None,
) -> None:
    """Put quarantined records, corrected, back into PIPELINE's inbox.

    The next batch validates them in full, like any record read from a landing file; a
    record that would be quarantined again right now is refused with the reason, and
    then nothing is re-admitted. Each record is marked re-admitted (when, by whom) in the
    same transaction, so running this twice adds nothing.
    """
    from tidemill.access import command

    config = _owner(pipeline)
    if fixed is not None and ids:
        raise TidemillError("give quarantine ids or --file, not both")
    if fixed is not None:
        if assignments:
            raise TidemillError("--set applies to ids; with --file, put the values in the file")
        fixes = _fixes_from_file(fixed)
    elif ids:
        changes = _changes(assignments or [])
        fixes = [{"id": i, "changes": changes} for i in ids]
    else:
        raise TidemillError(
            f"name the records: tidemill quarantine readmit {pipeline} ID [--set COLUMN=VALUE] "
            "or --file fixed.csv"
        )
    if not fixes:
        raise TidemillError(f"{fixed}: holds no records")
    done: dict[str, list[Any]] = {"readmitted": [], "already": []}
    for part in _parts(fixes):  # an owner takes requests up to 1 MiB; each part is atomic
        reply = command(config, "readmit", pipeline=pipeline, fixes=part, actor=_actor())
        done["readmitted"] += reply["readmitted"]
        done["already"] += reply["already"]
    if done["readmitted"]:
        listed = ", ".join(map(str, done["readmitted"]))
        out.print(
            f"{pipeline}: {len(done['readmitted'])} record(s) back in the inbox (ids {listed}); "
            "the next batch validates them"
        )
    for quarantine_id, at, by in done["already"]:
        out.print(
            f"{pipeline}: id {quarantine_id} was re-admitted at {at[:19]} by {by}; nothing added"
        )


# ---------------------------------------------------------------- the stack


@app.command()
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
    from tidemill import layout
    from tidemill.deployments import stack

    config = _config()
    err.print("starting the Prefect server, the worker and the replayer …")
    try:
        started = stack.up(config, port=port, speed=None if no_replay else speed, workers=workers)
    except stack.StackError as error:
        stack.down(config)
        raise TidemillError(str(error)) from None
    first = started.pipelines[0] if started.pipelines else "PIPELINE"
    duckdb_cli = Path(sys.executable).with_name("duckdb")
    catalog = layout.write_catalog(config)
    owner = layout.owner_config(config, first) if started.pipelines else config
    routed = f" -p {first}" if catalog else ""
    out.print(
        f"\n[bold green]tidemill is running[/bold green] (state in {config.state_dir}; "
        f"workers: {', '.join(started.worker_pids)})\n"
        f"  Prefect UI    {started.ui_url}  (Deployments → micro-batch/{first.replace('_', '-')})\n"
        f'  SQL           tidemill query{routed} "SELECT count(*) AS rows, max(ts) FROM raw.{first}"\n'
        f"  models        tidemill models list {first}\n"
        f"  status        tidemill status\n"
        + (
            f"  snapshots     {duckdb_cli} -init {catalog}  (every worker's, as w1, w2, ...)\n"
            if catalog
            else f"  snapshot      {duckdb_cli} -readonly {owner.state_dir / 'snapshot.duckdb'}\n"
        )
        + f"  logs          {stack.logs_dir(config.state_dir)}/\n"
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


@app.command()
def down() -> None:
    """Stop the replayer, the worker and the Prefect server of this state folder."""
    from tidemill.deployments import stack

    stopped = stack.down(_config())
    err.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command()
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
    import logging
    import os

    from tidemill import layout
    from tidemill.deployments.prefect_server import server_env

    main = _config()
    if "PREFECT_API_URL" not in os.environ:
        os.environ.update(server_env(main.state_dir, get_settings().prefect_port))
    config = layout.worker_config(main, as_worker) if as_worker else main
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from tidemill.deployments.worker import run_worker

    run_worker(config, pipeline)


@app.command()
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
    from tidemill.deployments.replayer import serve_replay

    serve_replay(_config(), dataset, speed, tick_seconds=tick, max_files=max_files, say=err.print)


# ---------------------------------------------------------------- entry point


def main() -> None:
    """Console-script entry: an expected failure (TidemillError) or a usage error prints
    one line and exits 2; anything else is a bug and keeps its traceback."""
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
