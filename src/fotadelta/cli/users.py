"""Operators: `fotadelta user add NAME --role ROLE`, the first user of a new server included.

The user is made either in the server's database directly (`--data DIR` or `--db URL`: whoever
can open the database is its administrator anyway), or through a running server's operator API
(`--server URL`, with the admin token or an administrator's API token). The password comes from a
prompt, or with `--password-stdin` from the first line of standard input; never from the command
line, where other users of the machine could read it."""

import getpass
import sys
from pathlib import Path
from typing import Annotated

import typer

from fotadelta.cli.common import (CliError, UsageError, command, emit, group, one_of, operator_request,
                                  server_option, token_option)

users_app = group("user", "Operators of a DM server: users who log in to the console and the operator API.")
ROLES = ("admin", "deployment_manager", "customer_care", "read_only")


@command("add", group=users_app, examples=[
    "fotadelta user add alice --role admin --data server        # the first user, on the server's database",
    "printf '%s\\n' \"$PASSWORD\" | fotadelta user add bob --role customer_care --password-stdin \\",
    "    --server http://127.0.0.1:8080 --admin-token \"$TOKEN\"",
])
def user_add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The user's name (1 to 64 printable characters).",
                                        show_default=False)],
    role: Annotated[str, typer.Option("--role", metavar="ROLE", callback=one_of(*ROLES),
                                      help="admin, deployment_manager, customer_care or read_only.",
                                      show_default=False)],
    data: Annotated[Path | None, typer.Option("--data", metavar="DIR", help="The server's data directory (its "
                                              "database is DIR/fotadelta.db).", show_default=False)] = None,
    db: Annotated[str | None, typer.Option("--db", metavar="URL", help="The server's database URL (SQLAlchemy).",
                                           show_default=False)] = None,
    server: Annotated[str | None, server_option()] = None,
    token: Annotated[str | None, token_option()] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from the first line "
                                                 "of standard input instead of prompting for it.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new user as JSON.")] = False,
) -> None:
    """Create a user of a DM server: on its database (--data or --db) or through its API (--server)."""
    if sum(x is not None for x in (data, db, server)) != 1:
        raise UsageError("give one of --data, --db (the server's database) or --server (its operator API)")
    if token is not None and server is None:
        raise UsageError("--admin-token goes with --server")
    password = _password(password_stdin)
    if server is not None:
        user = operator_request("POST", f"{server}/api/v1/users", token,
                                json={"name": name, "password": password, "role": role})
        where = server
    else:
        user, where = _add_to_database(db, data, name, password, role)
    emit(quiet, as_json, f"user {user['name']} ({user['role']}) created on {where}", user)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise CliError("the passwords differ")
    else:
        raise UsageError("no terminal to ask for the password on: give it on standard input with --password-stdin")
    if not 8 <= len(password) <= 1024:
        raise CliError("a password is 8 to 1024 characters")
    return password


def _add_to_database(db: str | None, data: Path | None, name: str, password: str,
                     role: str) -> tuple[dict[str, object], str]:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from fotadelta.server import ServerConfig
    from fotadelta.server.auth import Auth, Conflict, Role
    from fotadelta.server.store import Store
    if data is not None and not (data / "fotadelta.db").is_file():
        raise CliError(f"--data {data}: no server database here (start `fotadelta serve --data {data}` once)")
    url = db or ServerConfig(data or Path("."), "").database
    try:
        store = Store(url)
    except (SQLAlchemyError, ImportError) as exc:
        raise CliError(f"--db {url}: {' '.join(str(exc).split()).split(' (Background')[0]}") from None
    try:
        auth = Auth(store)
        user = auth.create_user(auth.bootstrap_admin(), name, password, Role(role))
    except Conflict as exc:
        raise CliError(str(exc)) from None
    finally:
        store.engine.dispose()
    return ({"name": user.name, "role": user.role.value, "created_at": user.created_at},
            make_url(url).render_as_string(hide_password=True))
