"""tidemill: real-time analytics and online machine learning on one machine.

The package holds the glue (settings, config, CLI); the work lives in the top-level
packages `tasks` (pure logic), `warehouse` (DuckDB), `flows` (Prefect orchestration)
and `deployments` (how it runs).
"""

__version__ = "0.1.0"
