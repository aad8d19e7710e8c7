"""The local stack `tidemill up` starts and watches: PostgreSQL and the Prefect server, the
Redis broker, the workers and replayers, each a process with a pid file (processes.py)."""
