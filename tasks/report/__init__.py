"""Charts and the report page, drawn from frames (no reads)."""
