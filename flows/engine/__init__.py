"""The engine the Prefect flows drive, free of Prefect: who owns the warehouse and the
models (runtime, pipelines, models, publication, placement), and the work in order (cycle,
drive, ingest, backfill, replay, erase). The CLI runs it directly; flows/*.py wrap it."""
