"""`python -m tidemill` is the `tidemill` command."""

from tidemill.cli import main

main()
