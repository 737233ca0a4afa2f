"""`python -m dsprep` runs the command line."""

from dsprep.cli import main

if __name__ == "__main__":
    main()
