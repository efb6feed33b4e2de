"""`fotadelta user add`: the first user on a server's database, more through the operator API, the
password from standard input (never the command line), and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fotadelta.server import DmServer, ServerConfig, create_app, serve_in_thread
from fotadelta.server.auth import Auth, AuthError, Role
from fotadelta.server.store import Store


def cli(*args: str | Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fotadelta.cli", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=120)


def _login(url: str, name: str, password: str) -> Role:
    store = Store(url)
    try:
        return Auth(store).login(name, password).role
    finally:
        store.engine.dispose()


def test_the_first_user_goes_into_the_servers_database(tmp_path: Path) -> None:
    server = DmServer(ServerConfig(tmp_path, "http://127.0.0.1:0"))  # what `serve --data` made
    server.store.engine.dispose()
    done = cli("user", "add", "alice", "--role", "admin", "--data", tmp_path, "--password-stdin", "--json",
               stdin="correct horse battery\n")
    assert done.returncode == 0, done.stderr
    user = json.loads(done.stdout)
    assert (user["name"], user["role"]) == ("alice", "admin")
    url = server.config.database
    assert _login(url, "alice", "correct horse battery") == Role.ADMIN
    with pytest.raises(AuthError):
        _login(url, "alice", "correct horse battery\n")  # (the line's end is not part of it)
    again = cli("user", "add", "alice", "--role", "read_only", "--data", tmp_path, "--password-stdin",
                stdin="another password\n")
    assert again.returncode == 1 and again.stderr == "fotadelta: error: user alice exists\n", again.stderr


def test_users_through_the_operator_api_need_the_admin_token(tmp_path: Path) -> None:
    server = DmServer(ServerConfig(tmp_path, "http://127.0.0.1:0", admin_token="root-token"))
    running = serve_in_thread(create_app(server))
    url = f"http://127.0.0.1:{running.port}"
    try:
        refused = cli("user", "add", "bob", "--role", "customer_care", "--server", url, "--password-stdin",
                      stdin="bobs-password\n")
        assert refused.returncode == 1 and "HTTP 401" in refused.stderr, refused.stderr
        done = cli("user", "add", "bob", "--role", "customer_care", "--server", url, "--admin-token", "root-token",
                   "--password-stdin", stdin="bobs-password\n")
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"user bob (customer_care) created on {url}\n"
        assert _login(server.config.database, "bob", "bobs-password") == Role.CUSTOMER_CARE
    finally:
        running.stop()


@pytest.mark.parametrize("args, stdin, message", [
    (["--role", "admin", "--password-stdin"], "long enough\n", "give one of --data, --db"),
    (["--role", "admin", "--data", ".", "--db", "sqlite://"], "", "give one of --data, --db"),
    (["--role", "admin", "--db", "sqlite://"], "", "no terminal to ask for the password on"),
    (["--role", "admin", "--db", "sqlite://", "--password", "in-argv!"], "", "no such option: --password"),
    (["--role", "root", "--db", "sqlite://", "--password-stdin"], "long enough\n", "--role"),
    (["--role", "admin", "--db", "sqlite://", "--admin-token", "t", "--password-stdin"], "long enough\n",
     "--admin-token goes with --server"),
])
def test_bad_arguments_are_one_line_usage_errors(args: list[str], stdin: str, message: str) -> None:
    done = cli("user", "add", "carol", *args, stdin=stdin)
    assert done.returncode == 2, done
    assert done.stderr.startswith("fotadelta: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr, done.stderr


def test_a_short_password_or_a_missing_database_is_one_line(tmp_path: Path) -> None:
    short = cli("user", "add", "dave", "--role", "admin", "--db", "sqlite://", "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and short.stderr == "fotadelta: error: a password is 8 to 1024 characters\n"
    missing = cli("user", "add", "dave", "--role", "admin", "--data", tmp_path / "none", "--password-stdin",
                  stdin="long enough\n")
    assert missing.returncode == 1 and "no server database here" in missing.stderr, missing.stderr
