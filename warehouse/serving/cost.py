"""What a read would cost, judged from DuckDB's plan before it runs.

On the live path (quack.py) nothing can stop a statement once it runs: DuckDB 1.5.5 has
no statement timeout, a Quack client's interrupt does not reach the server, and neither
`quack_stop` nor interrupting or closing the owner's connection cancels it (measured,
docs/duckdb-1.5.md). So the owner refuses, before it runs, a statement whose plan says
it would not finish: more than `max_rows` rows estimated for any operator (a product
of both sides for a join with no estimate, as cross joins have), or a recursive CTE
(DuckDB cannot bound one). The file and snapshot paths need no such guess: their
statements are interrupted after the time limit.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from tidemill.warehouse.serving.readonly import QueryLimitExceeded, explained_query

MAX_PLAN_ROWS = 1_000_000_000
_UNBOUNDED = frozenset({"REC_CTE", "RECURSIVE_CTE", "RECURSIVE_KEY_CTE"})
_PRODUCTS = frozenset(
    {"CROSS_PRODUCT", "BLOCKWISE_NL_JOIN", "NESTED_LOOP_JOIN", "PIECEWISE_MERGE_JOIN"}
)


def check_cost(con: duckdb.DuckDBPyConnection, sql: str, max_rows: int = MAX_PLAN_ROWS) -> None:
    """Raise QueryLimitExceeded if a statement of `sql` (already checked read-only) plans
    more than `max_rows` rows in any operator or recurses."""
    for statement in con.extract_statements(sql):
        query = statement.query
        if statement.type == duckdb.StatementType.EXPLAIN:
            query = explained_query(query)
        try:
            rows = con.execute(f"EXPLAIN (FORMAT json) {query}").fetchall()
        except duckdb.Error:
            continue  # it cannot be planned, so it fails the same way when it is run
        for _, plan in rows:
            for node in json.loads(plan):
                _check_node(node, max_rows)


def _check_node(node: dict[str, Any], max_rows: int) -> int:
    """The node's estimated rows, checked against `max_rows` (children first)."""
    children = [_check_node(child, max_rows) for child in node.get("children", [])]
    name = str(node.get("name", "")).strip().upper()
    if name in _UNBOUNDED:
        raise QueryLimitExceeded(
            "recursive CTEs are refused on the live path, where a running statement cannot be "
            "stopped: run it on the file or snapshot (tidemill query --snapshot)"
        )
    estimate = str(node.get("extra_info", {}).get("Estimated Cardinality", "")).lstrip("~")
    rows = int(estimate) if estimate.isdigit() else 0
    if not rows and name in _PRODUCTS and children:
        rows = 1
        for child in children:
            rows *= max(child, 1)
    if rows > max_rows:
        raise QueryLimitExceeded(
            f"the plan estimates {rows:,} rows in {name.lower()}, over the {max_rows:,} a "
            "statement may plan on the live path (a running statement cannot be stopped "
            "there): narrow it, or read the snapshot (tidemill query --snapshot)"
        )
    return rows
