"""One transaction around a block of warehouse writes: the only BEGIN/COMMIT in tidemill.

Its own module because the migrations (run by `connection.open_warehouse`) use it too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

log = logging.getLogger("tidemill")


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Run the block in one transaction: COMMIT when it ends, ROLLBACK when it raises.

    The block's own exception propagates, never one from the rollback that follows it (a
    statement that failed inside leaves DuckDB's transaction aborted, and what the caller
    needs is the first error, not "Current transaction is aborted")."""
    con.begin()
    try:
        yield con
    except BaseException:
        try:
            con.rollback()
        except duckdb.Error as error:  # the connection is broken: the block's error is the news
            log.warning("rollback failed after an error: %s", error)
        raise
    con.commit()
