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


# --- a store written by the release before revision 0003 (votes with one column per question) ---------------

MIGRATION = "db/migrations/versions/0003_vote_answers_by_question.py"
RELEASE_SCRIPT = """
import json, sys
from annotation.store.database import make_store
from annotation.store.demo import seed_demo_data
from annotation.store.export import export_preferences
from annotation.store.stats import agreement
from db.migrate import current_revision

action, data_dir, url, out = sys.argv[1:]
store = make_store(data_dir, url or None)
with store.sessions() as s:
    if action == "seed":
        seed_demo_data(s, store.data_dir, candidates=24, votes=90, annotators=4, overlap=3, gold_rate=0.1, seed=5)
    export_preferences(s, out)
    found = {d: [a.alpha, a.units, a.ratings] for d, a in agreement(s).items()}
print(json.dumps({"revision": current_revision(store.engine), "agreement": found}))
"""


def _release_tree(tmp_path):
    """The code of the release before revision 0003 (``git archive`` of the commit before the one adding it)."""
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("needs the git history of the repository")
    added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "-1", "--", MIGRATION], cwd=root,
                           capture_output=True, text=True, check=True).stdout.strip()
    release = f"{added}^" if added else "HEAD"
    if subprocess.run(["git", "cat-file", "-e", f"{release}^{{commit}}"], cwd=root, capture_output=True).returncode:
        pytest.skip("needs the git history of the repository (a shallow clone lacks the release before 0003)")
    tree = tmp_path / "release"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", release, "annotation", "db", "idglow"], cwd=root,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    assert not (tree / MIGRATION).exists()
    return tree


def _run_release(tree, action, data_dir, url, out):
    """Run the release's own code on the store: seed it (``seed``) or not, export it to ``out``; returns its
    revision and agreement."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", RELEASE_SCRIPT, action, str(data_dir), url or "", str(out)],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _export_rows(out):
    import pyarrow.parquet as pq

    rows = {}
    for f in sorted((out / "data").glob("*.parquet")):
        for row in pq.read_table(f).to_pylist():
            rows[row["ranking_id"]] = row
    return rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_store_of_the_previous_release_upgrades_and_exports_the_same_preferences(backend, tmp_path):
    from annotation.store.export import export_preferences
    from annotation.store.stats import agreement

    tree = _release_tree(tmp_path)
    engine = _engine(backend, tmp_path)
    url = None if backend == "sqlite" else os.environ[PG_URL_ENV]
    data = tmp_path / "data"
    if backend == "sqlite":
        engine.dispose()
        engine = make_engine(f"sqlite:///{data / 'idglow.db'}")
    before = _run_release(tree, "seed", data, url, tmp_path / "before")
    assert before["revision"] == "0002" and current_revision(engine) == "0002"
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("votes")}
        assert {"strength", "identity", "texture", "artifacts"} <= columns
        stored = conn.execute(text("SELECT count(*), count(strength), count(identity), count(texture) FROM votes")).one()
    assert stored[0] == 90 and 0 < stored[1] < stored[0] and stored[2] == stored[3] == stored[0]
    old_rows = _export_rows(tmp_path / "before")
    # positive control: the store holds ties, graded and ungraded votes, and labels that differ per question
    assert any(r["label_0"] == 0.5 for r in old_rows.values())
    assert len({r["strength"] for r in old_rows.values()}) > 2
    assert any(r["texture_label_0"] != r["label_0"] for r in old_rows.values())

    upgrade(engine)
    assert current_revision(engine) == head_revision(engine)
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("votes")}
    assert "answers" in columns and not {"strength", "identity", "texture", "artifacts"} & columns
    sessions = make_session_factory(engine)
    with sessions() as s:
        export_preferences(s, tmp_path / "after")
        found = {d: [a.alpha, a.units, a.ratings] for d, a in agreement(s).items()}
    after = _export_rows(tmp_path / "after")
    added = {c for row in after.values() for c in row} - {c for row in old_rows.values() for c in row}
    assert added <= {"subject_describe_as", "clip_caption"}  # columns of later releases
    assert all(not any(row.get("subject_describe_as") or []) for row in after.values())  # nothing stored there yet
    after = {k: {c: v for c, v in row.items() if c not in added} for k, row in after.items()}
    assert after == old_rows  # every column of every row, labels and strengths included
    assert found == before["agreement"] and found["identity"][1] > 0

    downgrade(engine, "0002")
    again = _run_release(tree, "export", data, url, tmp_path / "again")
    assert again == before
    assert _export_rows(tmp_path / "again") == old_rows
    engine.dispose()
