"""Data sets replayed as live streams, all on one clock (clock.py): landing files
(files.py), sensor readings on a Redis stream (sensors.py); `tidemill replay` (serve.py)."""
