"""Units of work: pure Polars / numpy / scikit-learn logic (no Prefect, no DuckDB)."""
