"""The warehouse's bookkeeping of what happened: batches, backfills, erasures, and the
history of clean rows a replay or an erasure reads."""
