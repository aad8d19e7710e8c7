"""How tidemill runs: the local Prefect server, deployments, the worker and the replayer."""
