"""Prefect flows: orchestration only (order, retries, logging, artifacts)."""
