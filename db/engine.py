"""Engine and session factories. Nothing connects at import time.

On SQLite every connection runs in WAL mode with ``synchronous=FULL``, a busy timeout and foreign keys on,
and every transaction starts with ``BEGIN IMMEDIATE`` so that a writer takes the write lock up front
(waiting up to the busy timeout) instead of failing half-way with "database is locked". Read-only work can
start a non-blocking ``BEGIN DEFERRED`` transaction with :func:`read_only`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_MS = 30_000
_BEGIN_OPTION = "idglow_sqlite_begin"


def _sqlite_in_memory(database: str | None) -> bool:
    database = database or ""
    return database in ("", ":memory:") or database.startswith("file::memory:") or "mode=memory" in database


def is_sqlite_file(engine: Engine) -> bool:
    """True for a SQLite database in a file (every connection of the engine sees the same data)."""
    return engine.dialect.name == "sqlite" and not (
        _sqlite_in_memory(engine.url.database) or engine.url.query.get("mode") == "memory"
    )


def make_engine(url: str, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS, **kwargs: Any) -> Engine:
    """Create an engine for any SQLAlchemy URL; SQLite gets the durability settings described above.

    For a SQLite file the parent folder is created. Extra keyword arguments go to ``create_engine``.
    """
    sa_url = make_url(url)
    if sa_url.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(sa_url, **kwargs)

    database = sa_url.database or ""
    in_memory = _sqlite_in_memory(database) or sa_url.query.get("mode") == "memory"
    if not in_memory:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    connect_args = dict(kwargs.pop("connect_args", {}))
    connect_args.setdefault("timeout", busy_timeout_ms / 1000)
    connect_args.setdefault("check_same_thread", False)
    if not in_memory:
        kwargs.setdefault("pool_size", 8)
        kwargs.setdefault("max_overflow", 56)
    engine = create_engine(sa_url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # noqa: ANN001
        # Let SQLAlchemy (not the sqlite3 module) emit BEGIN, so that we can choose IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (services return them to callers)."""
    return sessionmaker(bind=engine, expire_on_commit=False, future=True)


def read_only(session: Session) -> Session:
    """Start ``session``'s transaction as a non-locking read on SQLite (``BEGIN DEFERRED``).

    Call it before the session's first statement; on other backends it does nothing.
    """
    bind = session.get_bind()
    if bind.dialect.name == "sqlite":
        session.connection(execution_options={_BEGIN_OPTION: "DEFERRED"})
    return session
