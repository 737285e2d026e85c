"""Many writers on one SQLite file, and crash safety under SIGKILL."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select
from store_fixtures import make_store, small_world

from annotation.crashcheck import run_kill_loop
from annotation.store import sampling as S
from annotation.store import votes as V
from db.models import Comparison, Vote

THREADS = 16
VOTES_PER_THREAD = 200


@pytest.fixture
def fast_dir(tmp_path):
    """A folder in memory when the system has one: this test is about concurrency, not fsync speed
    (durability on disk is the SIGKILL test's job)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        folder = Path(tempfile.mkdtemp(prefix="idglow-votes-", dir=shm))
        yield folder
        shutil.rmtree(folder, ignore_errors=True)
    else:
        yield tmp_path


@pytest.mark.slow
def test_16_threads_x_200_votes_with_double_submits(fast_dir):
    _run_threads(fast_dir, VOTES_PER_THREAD)


def test_16_threads_x_25_votes_with_double_submits(fast_dir):
    _run_threads(fast_dir, 25)


def _run_threads(fast_dir, votes_per_thread):
    store = make_store(fast_dir)
    _, ids = small_world(store, candidates=300, annotators=THREADS)  # 1650 comparisons
    users = [ids[f"annotator{k}"] for k in range(1, THREADS + 1)]
    keys: dict[int, list[tuple[int, str]]] = {u: [] for u in users}
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def annotate(user: int) -> None:
        rng = random.Random(user)
        try:
            start.wait()
            with store.sessions() as s:
                for i in range(votes_per_thread):
                    served = S.next_comparison(s, user, overlap=THREADS, gold_rate=0.0, rng=rng)
                    request = V.VoteRequest(served.comparison_id, user, rng.choice("ab"), f"{user}-{i}")
                    first = V.record_vote(s, request)
                    keys[user].append((served.comparison_id, request.idempotency_key))
                    if i % 5 == 0:  # a double click
                        assert V.record_vote(s, request).vote_id == first.vote_id
            # resubmit another user's keys at the same time as everyone else (lost responses retried)
            other = users[(users.index(user) + 1) % THREADS]
            with store.sessions() as s:
                for comparison_id, key in keys[other][:25]:
                    assert V.record_vote(s, V.VoteRequest(comparison_id, other, "a", key)).replayed
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=annotate, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    with store.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Vote)) == THREADS * votes_per_thread
        dup = s.execute(
            select(Vote.comparison_id, Vote.user_id)
            .group_by(Vote.comparison_id, Vote.user_id)
            .having(func.count() > 1)
        ).all()
        assert dup == []
        per_user = Counter(u for (u,) in s.execute(select(Vote.user_id)))
        assert set(per_user.values()) == {votes_per_thread}
        assert s.scalar(select(func.sum(Comparison.vote_count))) == THREADS * votes_per_thread
    store.engine.dispose()


def test_sigkill_during_votes_loses_no_acknowledged_vote(tmp_path):
    report = run_kill_loop(tmp_path, kills=20, seed=1)
    assert report.kills == 20
    assert report.acknowledged >= 20


@pytest.mark.slow
def test_sigkill_200_times(tmp_path):
    report = run_kill_loop(tmp_path, kills=200, seed=2)
    assert report.acknowledged >= 200
