"""The `tidemill` command line: `app.py` holds the commands in the order `--help` lists
them, one module per command group beside it."""
