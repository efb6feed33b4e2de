"""Alembic's environment: migrations run on the connection `fotadelta.server.migrations.upgrade`
hands over (or, from the `alembic` command, on the URL of alembic.ini's sqlalchemy.url)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

import fotadelta.server.capabilities  # noqa: F401  (declares its table on Base)
import fotadelta.server.console.sessions  # noqa: F401  (declares its table on Base)
import fotadelta.server.tables  # noqa: F401  (declares the fleet's tables on Base)
from fotadelta.server.store import Base

connection = context.config.attributes.get("connection")
if connection is None:  # the `alembic` command line, for a developer writing a new step
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "sqlite:///fotadelta.db")
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata)
    context.run_migrations()
