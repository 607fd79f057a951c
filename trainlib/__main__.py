"""`python -m trainlib` runs the CLI."""

from trainlib.cli import main

main()
