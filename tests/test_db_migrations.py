"""Schema migrations and the SQLite connection settings."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from store_fixtures import PG_URL_ENV, reset_database

from db.engine import make_engine, make_session_factory
from db.migrate import current_revision, downgrade, head_revision, upgrade
from db.models import Base, ModelVersion

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _engine(backend, tmp_path):
    if backend == "sqlite":
        return make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    if not os.environ.get(PG_URL_ENV):
        pytest.skip(f"{PG_URL_ENV} is not set")
    engine = make_engine(os.environ[PG_URL_ENV])
    reset_database(engine)
    downgrade(engine, "base")
    return engine


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrade_downgrade_upgrade_and_models_match(backend, tmp_path):
    engine = _engine(backend, tmp_path)
    upgrade(engine)
    assert current_revision(engine) == head_revision(engine)
    assert {"users", "votes", "comparisons", "candidates", "exports"} <= set(
        inspect(engine).get_table_names()
    )
    downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        assert compare_metadata(ctx, Base.metadata) == []
    names = {c["name"] for c in inspect(engine).get_unique_constraints("votes")}
    assert "vote_comparison_user_uq" in names
    engine.dispose()


def test_sqlite_connection_settings(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 's.db'}")
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
        conn.rollback()
    # writes take the write lock at BEGIN: a second writer waits instead of failing mid-transaction
    fast = make_engine(f"sqlite:///{tmp_path / 'sub' / 's.db'}", busy_timeout_ms=100)
    with engine.connect() as c1:
        c1.execute(text("SELECT 1"))  # BEGIN IMMEDIATE happened
        with fast.connect() as c2, pytest.raises(Exception, match="locked"):
            c2.execute(text("SELECT 1"))
        c1.rollback()
    engine.dispose()
    fast.dispose()


def test_timestamps_are_utc_aware_and_naive_refused(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 't.db'}")
    upgrade(engine)
    sessions = make_session_factory(engine)
    with sessions() as s:
        s.add(ModelVersion(name="m"))
        s.commit()
    with sessions() as s:
        mv = s.query(ModelVersion).one()
        assert mv.created_at.tzinfo is timezone.utc
        mv.created_at = datetime(2024, 1, 1)
        with pytest.raises(Exception, match="timezone-aware"):
            s.commit()
    engine.dispose()


def test_foreign_keys_cascade(tmp_path):
    from store_fixtures import make_store, small_world

    from db.models import Candidate, Comparison, Generation

    store = make_store(tmp_path)
    small_world(store, candidates=8)
    with store.sessions() as s:
        gen_id = s.query(Generation.id).first()[0]
        s.query(Generation).filter(Generation.id == gen_id).delete()
        s.commit()
        assert s.query(Candidate).filter(Candidate.generation_id == gen_id).count() == 0
        ids = {c for (c,) in s.query(Candidate.id)}
        for a, b in s.query(Comparison.candidate_a_id, Comparison.candidate_b_id):
            assert a in ids and b in ids
    store.engine.dispose()
