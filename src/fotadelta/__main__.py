"""`python -m fotadelta`: the command line."""

from fotadelta.cli import main

main()
