"""DuckDB: schema migrations, connections, ledgers, watermarks and the model registry."""
