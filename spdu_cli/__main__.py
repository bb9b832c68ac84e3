"""`python -m spdu_cli`: the same as the `spdu` command."""

from spdu_cli.cli import main

main()
