from spdu_cli.cli import main

main()
