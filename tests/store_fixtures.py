"""Stores for tests: a fresh migrated database on SQLite or PostgreSQL, and a small world of generations."""

from __future__ import annotations

import os

from sqlalchemy import Engine

from annotation.store.database import Store, make_store
from annotation.store.demo import pattern_image
from db.migrate import upgrade

__all__ = ["PG_URL_ENV", "Store", "make_store", "open_test_store", "pattern_image", "reset_database", "small_world"]


def reset_database(engine: Engine) -> None:
    """Drop every table through the migrations and recreate them (used between PostgreSQL tests)."""
    from db.migrate import downgrade

    downgrade(engine, "base")
    upgrade(engine)


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

    from annotation.store.demo import seed_demo_data
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
