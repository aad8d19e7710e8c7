"""`tidemill erase`: remove a data subject from a pipeline and from what its models learned."""

from __future__ import annotations

from typing import Annotated

import typer

from tidemill.cli import session
from tidemill.cli.access import command
from tidemill.cli.output import out
from tidemill.errors import TidemillError
from tidemill.keys import get_key


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
    from tidemill.tasks.records.pii import subject_digest, subject_value

    config = session.owner(pipeline)
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
    done = command(config, "erase", pipeline=pipeline, stored_value=stored, actor=session.actor())
    out.print(
        f"{pipeline}: erasure {done['erasure_id']}: removed {done['rows_raw']} rows "
        f"({done['rows_quarantine']} quarantined, {done['rows_inbox']} waiting, "
        f"{done['rows_predictions']} predictions), recomputed {done['windows_recomputed']} "
        f"windows, rebuilt {done['versions_rebuilt']} model versions, deleted "
        f"{done['artifacts_deleted']} artifacts"
        + ("; rewrote the warehouse file and snapshot" if done["file_rewritten"] else "")
    )
