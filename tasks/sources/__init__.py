"""Where records come from: landing files, PostgreSQL tables, Redis streams. The only I/O
in tasks/."""
