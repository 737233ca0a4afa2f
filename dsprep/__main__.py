"""`python -m dsprep` runs the command line."""

from dsprep.cli import main

main()
