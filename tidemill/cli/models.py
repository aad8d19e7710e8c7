"""`tidemill models …`, `replay-model` and `maintain`: the model registry and its artifacts."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from tidemill.cli import session
from tidemill.cli.access import command, read_sql
from tidemill.cli.output import Format, cell, err, out, print_result
from tidemill.errors import TidemillError


def models_list(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Newest N versions.")] = 20,
) -> None:
    """Model versions of PIPELINE, newest first: lineage, rows seen, hash, metrics."""
    from tidemill.warehouse.reports import models_sql

    result, _ = read_sql(session.owner(pipeline).state_dir, models_sql(pipeline))
    rows = result.rows[:limit]
    if as_json:
        print_result(result.columns, rows, Format.json)
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
            str(cell(row[index["created_at"]]))[:19],
            row[index["sha256"]][:12],
            " ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
        )
    out.print(table)


def models_show(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    version: Annotated[
        int | None, typer.Argument(help="Version (default: the champion).", min=1)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Everything recorded about one model version (default: the champion)."""
    from tidemill.warehouse.reports import models_sql

    result, _ = read_sql(session.owner(pipeline).state_dir, models_sql(pipeline, version))
    rows = result.rows
    if version is None:
        rows = [r for r in rows if r[result.columns.index("status")] == "champion"]
    if not rows:
        what = f"version {version}" if version else "champion"
        raise TidemillError(f"{pipeline} has no {what} yet (see `tidemill models list {pipeline}`)")
    record = {c: cell(v) for c, v in zip(result.columns, rows[0], strict=True)}
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


def _change_champion(pipeline: str, version: int | None, action: str, reason: str) -> None:

    config = session.owner(pipeline)
    done = command(
        config,
        "champion",
        pipeline=pipeline,
        version=version,
        action=action,
        actor=session.actor(),
        reason=reason,
    )
    out.print(f"{pipeline}: v{done['version']} is the champion ({done['rows_seen']} rows seen)")


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

    config = session.owner(pipeline)
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

    config = session.owner(pipeline)
    done = command(config, "sign", pipeline=pipeline, resign=resign)
    out.print(f"{pipeline}: signed {len(done['signed'])} versions")
    for version, why in done["refused"].items():
        err.print(f"  v{version} left unsigned: {why}", highlight=False, markup=False)


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

    config = session.owner(pipeline)
    done = command(config, "maintain", pipeline=pipeline, actor=session.actor())
    out.print(
        f"{pipeline}: pruned {done['artifacts_pruned']} artifacts, kept {done['artifacts_kept']}, "
        f"removed {done['orphans_removed']} orphans and {done['temp_files_removed']} unfinished "
        f"writes, freed {int(done['bytes_freed']) / 2**20:.1f} MiB"
    )
