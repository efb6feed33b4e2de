"""The server database's schema, as Alembic migrations: `upgrade` brings any database to the schema
the code declares, and runs whenever a `Store` opens one (so `fotadelta serve`, the tests and the
CLI never meet an old schema).

`versions/` holds the steps: `0001` the DM store as it was before migrations (devices, packages,
jobs, sessions, events), `0002` the fleet (registry columns, users, tokens, audit, groups, tags,
releases, DM commands, campaigns, console sessions), `0003` device accounts per direction and
capabilities per make/model/version, `0004` sessions kept in the database between messages (token,
sealed state, last message) and redeemed portal tokens, `0005` one capability record per kind and source,
`0006` the change counts of read-mostly data that server processes keep in memory, `0007` sessions
rows updated in place (no index on the time of their last message; room on PostgreSQL's pages), `0008` jobs updated in place (no index on their state), `0009` the change count of the chain planner's packages. A database made before migrations existed has
no `alembic_version` table: every step adds only what is missing, so such a database is taken over
where it stands. On PostgreSQL the upgrade holds an advisory lock, so servers starting together on
one database migrate it once; on SQLite the upgrade's transaction begins IMMEDIATE, which does the same.

A new step: change the tables in the code, then `alembic -c src/fotadelta/server/migrations/alembic.ini
revision -m "what" --autogenerate` against a database at head, and check what it wrote (the tests
compare the migrated schema with the declared one)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command, op
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine

HERE = Path(__file__).parent
LOCK = 0x46444D47  # the PostgreSQL advisory lock key of a migration ("FDMG")


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for this package's migrations (on connection, when given)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to revision (default: the newest), in one transaction."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK})
        command.upgrade(config(conn), revision)


def current(engine: Engine) -> str | None:
    """The revision the database is at (None: not under migrations yet)."""
    from alembic.runtime.migration import MigrationContext
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


# -- for the steps: each adds only what is missing ----------------------------------------------

def has_table(name: str) -> bool:
    return sa.inspect(op.get_bind()).has_table(name)


def has_column(table: str, column: str) -> bool:
    return column in {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def has_index(table: str, name: str) -> bool:
    return name in {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(table)}


def create_table(name: str, *columns: sa.schema.SchemaItem, indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()
                 ) -> None:
    """The table with its indexes (name, columns), unless it exists; its indexes, unless they do."""
    if not has_table(name):
        op.create_table(name, *columns)
    for index, cols in indexes:
        if not has_index(name, index):
            op.create_index(index, name, list(cols))


def add_column(table: str, column: sa.Column[object]) -> bool:
    """Add the column unless it is there; True if it was added."""
    if has_column(table, column.name):
        return False
    op.add_column(table, column)
    return True


__all__ = ["config", "current", "upgrade"]
