"""Alembic environment of the preference store.

The engine comes from ``config.attributes["engine"]`` (``db.migrate``), else from ``-x url=...``, the
``sqlalchemy.url`` option, or ``$IDGLOW_DB_URL``. Batch mode is on so that SQLite can alter tables.
On SQLite, foreign keys are switched off while tables are rebuilt (a batch rebuild drops the old table,
which would otherwise fire ON DELETE CASCADE) and checked afterwards.
"""

from __future__ import annotations

import logging
import os

from alembic import context
from sqlalchemy import Engine

from db.models import Base

logger = logging.getLogger("db.migrations")
config = context.config
target_metadata = Base.metadata


def _engine() -> Engine:
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine
    from db.engine import make_engine

    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("IDGLOW_DB_URL")
    )
    if not url:
        raise RuntimeError(
            "no database URL: pass `alembic -x url=URL ...`, set sqlalchemy.url in alembic.ini or $IDGLOW_DB_URL "
            "(or run `idglow db upgrade`, which finds the default database)"
        )
    return make_engine(url)


def _configure(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        compare_server_default=True,
    )


def run_migrations_offline() -> None:
    """Write the migrations as SQL for the configured URL, without connecting."""
    url = config.get_main_option("sqlalchemy.url")
    context.configure(url=url, target_metadata=target_metadata, render_as_batch=True, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on a connection (on SQLite with foreign keys off, as batch mode needs)."""
    engine = _engine()
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:  # must happen outside a transaction to take effect
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
            if connection.in_transaction():
                connection.commit()
        finally:
            if sqlite:
                raw = connection.connection.driver_connection
                problems = raw.execute("PRAGMA foreign_key_check").fetchall()
                raw.execute("PRAGMA foreign_keys=ON")
                if problems:
                    raise RuntimeError(f"foreign key violations after migration: {problems[:10]}")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
