"""The `fotadelta` command line, one module per command group.

`common` holds the typer app and what every command shares; `delta` (diff, apply, info,
powercut), `packages` (keygen, pack, verify, inspect, build-repo, chain), `dm` (serve, device,
publish, assign), `accounts` (the `account` and `capability` groups), `traps` (a device's SNMP
request) and `demo` register their commands on it when imported, in the order `--help` lists them."""

import sys

from fotadelta.cli import common
from fotadelta.cli import delta, demo, packages, dm, accounts, traps  # noqa: F401  (registers the commands)
from fotadelta.cli.common import DiffProgress, app

__all__ = ["DiffProgress", "app", "main"]


def main() -> None:
    """Entry point of the `fotadelta` script."""
    sys.exit(common.main())
