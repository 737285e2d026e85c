"""A migrated preference store in a data folder: its engine, session factory, URL and folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory
from db.migrate import upgrade


@dataclass
class Store:
    """A migrated database: its engine, session factory, URL and data folder."""

    engine: Engine
    sessions: sessionmaker[Session]
    data_dir: Path
    url: str


def make_store(data_dir: str | os.PathLike[str], url: str | None = None) -> Store:
    """A migrated database (SQLite file in ``data_dir`` unless ``url`` is given) and its session factory."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    url = url or f"sqlite:///{data_dir / 'idglow.db'}"
    engine = make_engine(url)
    upgrade(engine)
    return Store(engine, make_session_factory(engine), data_dir, url)
