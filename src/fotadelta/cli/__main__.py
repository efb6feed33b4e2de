"""`python -m fotadelta.cli`."""

from fotadelta.cli import main

main()
