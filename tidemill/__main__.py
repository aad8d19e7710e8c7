"""`python -m tidemill` is the `tidemill` command."""

from tidemill.cli.app import main

main()
