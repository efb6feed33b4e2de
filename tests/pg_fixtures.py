"""A PostgreSQL cluster of the tests' own (Debian's postgresql, `make install`) on a Unix socket, and
fresh databases in it, for the tests that run the store on PostgreSQL as well as SQLite."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

_names = itertools.count(1)


def _pg_bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}")) or [shutil.which(tool) or ""]
    if not found[-1]:
        pytest.fail(f"PostgreSQL's {tool} is missing: install the Debian package postgresql (make install does)")
    return found[-1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL cluster of our own on a Unix socket; the SQLAlchemy URL of its database `fleet`."""
    # Not under pytest's tmp_path: as root that is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="fotadelta-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    # initdb and the server refuse to run as root; as root they run as the postgres user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    subprocess.run([*as_user, _pg_bin("initdb"), "-D", str(data), "-U", "fotadelta", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                    f"-k {sock} -c listen_addresses='' -p 54329", "start"], check=True, capture_output=True)
    try:
        subprocess.run([*as_user, _pg_bin("createdb"), "-h", str(sock), "-p", "54329", "-U", "fotadelta", "fleet"],
                       check=True, capture_output=True)
        yield f"postgresql+psycopg://fotadelta@/fleet?host={sock}&port=54329"
    finally:
        subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def new_database(url: str, *, icu_locale: str | None = None) -> str:
    """A new, empty database in the cluster of url (with icu_locale: collated by ICU in that locale, as
    many production clusters are, rather than the C order); its URL."""
    name = f"t{os.getpid()}_{next(_names)}"
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    locale = f" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE '{icu_locale}'" if icu_locale else ""
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}{locale}"))
    engine.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


__all__ = ["new_database", "postgres"]
