"""Small stores for tests and examples: a migrated database in a folder and a world of generations."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


def reset_database(engine: Engine) -> None:
    """Drop every table through the migrations and recreate them (used between PostgreSQL tests)."""
    from db.migrate import downgrade

    downgrade(engine, "base")
    upgrade(engine)


def pattern_image(index: int, size: int = 32) -> np.ndarray:
    """A distinct, deterministic RGB image for ``index`` (stands in for a generated picture)."""
    rng = np.random.default_rng(index)
    base = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.kron(base, np.ones((size // 4, size // 4, 1), dtype=np.uint8))


PG_URL_ENV = "IDGLOW_TEST_PG_URL"


def open_test_store(backend: str, data_dir: str | os.PathLike[str]) -> Store:
    """A fresh, migrated store on ``backend`` ("sqlite" file in ``data_dir``, or "postgres" at
    $IDGLOW_TEST_PG_URL, emptied first)."""
    if backend == "sqlite":
        return make_store(data_dir)
    if backend != "postgres":
        raise ValueError(f"unknown backend {backend!r}")
    url = os.environ[PG_URL_ENV]
    store = make_store(data_dir, url)
    reset_database(store.engine)
    return store


def small_world(store: Store, *, candidates: int = 24, annotators: int = 4, seed: int = 0):
    """Demo generations with no votes and no gold items; returns the demo summary and the user ids."""
    from sqlalchemy import select

    from annotation.demo import seed_demo_data
    from db.models import User

    with store.sessions() as session:
        summary = seed_demo_data(
            session,
            store.data_dir,
            candidates=candidates,
            votes=0,
            annotators=annotators,
            gold_rate=0.0,
            seed=seed,
        )
        ids = {u.username: u.id for u in session.scalars(select(User))}
    return summary, ids
