"""Group commit of votes on SQLite: batch-mates judged one by one, one transaction per batch, acknowledged
only after the commit; reads of the sampler do not take the write lock."""

from __future__ import annotations

import logging
import random
import time

import pytest
from sqlalchemy import func, select, text
from store_fixtures import make_store, small_world

from annotation.store import sampling as S
from annotation.store import votes as V
from annotation.store.errors import DuplicateVote, InvalidVote, NotFound
from db.engine import make_engine, make_session_factory
from db.models import Assignment, AssignmentStatus, Comparison, Vote
from db.types import utcnow


@pytest.fixture
def world(tmp_path):
    store = make_store(tmp_path)
    _, ids = small_world(store, candidates=24, annotators=3)
    users = [ids[f"annotator{k}"] for k in (1, 2, 3)]
    served = {}
    with store.sessions() as s:
        for u in users:
            served[u] = []
            for _ in range(3):
                sc = S.next_comparison(s, u, gold_rate=0.0, rng=random.Random(u))
                served[u].append(sc.comparison_id)
                S.skip_comparison(s, u, sc.comparison_id)  # a skipped pair can still be voted on
    yield store, users, served
    store.engine.dispose()


def _pending(request):
    return V._PendingVote(request, V._validate(request), utcnow())


def test_batch_outcomes_reach_their_own_callers(world):
    store, (u1, u2, u3), served = world
    c1, c2, c3 = served[u1]
    other = next(c for c in served[u2] if c not in served[u1])
    batch = [
        _pending(V.VoteRequest(c1, u1, "a", "k-1")),
        _pending(V.VoteRequest(c1, u1, "a", "k-1")),  # double click inside the batch: a replay
        _pending(V.VoteRequest(c1, u1, "b", "k-2")),  # same pair, new key: duplicate
        _pending(V.VoteRequest(c2, u1, "b", "k-1")),  # key already used for another vote
        _pending(V.VoteRequest(10**9, u1, "a", "k-3")),  # unknown comparison
        _pending(V.VoteRequest(c1, 10**9, "a", "k-4")),  # unknown user
        _pending(V.VoteRequest(other, u1, "a", "k-5")),  # not served to u1
        _pending(V.VoteRequest(c2, u1, "tie", "k-6", answers={"identity": {0: "tie"}})),
        _pending(V.VoteRequest(other, u2, "b", "k-7", answers={"strength": "clear"})),
        _pending(V.VoteRequest(c3, u1, "a", "k-8", answers={"identity": {5: "a"}})),  # slot out of range
    ]
    V._VoteWriter(store.engine)._write(batch)
    outcome = [p.future.exception() or p.future.result().result for p in batch]
    first = outcome[0]
    assert not first.replayed and first.overall.value == "a"
    assert outcome[1].replayed and outcome[1].vote_id == first.vote_id
    assert isinstance(outcome[2], DuplicateVote)
    assert isinstance(outcome[3], InvalidVote) and "already used" in str(outcome[3])
    assert isinstance(outcome[4], NotFound) and str(10**9) in str(outcome[4])
    assert isinstance(outcome[5], NotFound)
    assert isinstance(outcome[6], InvalidVote) and "not served" in str(outcome[6])
    assert not outcome[7].replayed and not outcome[8].replayed
    assert isinstance(outcome[9], InvalidVote) and "slot 5" in str(outcome[9])
    with store.sessions() as s:
        rows = dict(s.execute(select(Vote.idempotency_key, Vote.comparison_id)).all())
        assert rows == {"k-1": c1, "k-6": c2, "k-7": other}
        counts = dict(s.execute(select(Comparison.id, Comparison.vote_count)).all())
        assert counts[c1] == counts[c2] == counts[other] == 1 and sum(counts.values()) == 3
        statuses = dict(
            s.execute(
                select(Assignment.comparison_id, Assignment.status).where(Assignment.user_id == u1)
            ).all()
        )
        assert statuses[c1] == statuses[c2] == AssignmentStatus.voted
        assert statuses[c3] == AssignmentStatus.skipped
    # a later submission of a recorded key is a replay through the public API as well
    with store.sessions() as s:
        again = V.record_vote(s, V.VoteRequest(c1, u1, "a", "k-1"))
        assert again.replayed and again.vote_id == first.vote_id


def test_failing_vote_does_not_fail_its_batch_mates(world):
    store, (u1, u2, _), served = world
    with store.engine.begin() as conn:  # a database-level failure for one vote only
        conn.execute(
            text(
                "CREATE TRIGGER poison BEFORE INSERT ON votes WHEN NEW.idempotency_key = 'poison' "
                "BEGIN SELECT RAISE(ABORT, 'poisoned vote'); END"
            )
        )
    batch = [
        _pending(V.VoteRequest(served[u1][0], u1, "a", "good-1")),
        _pending(V.VoteRequest(served[u1][1], u1, "a", "poison")),
        _pending(V.VoteRequest(served[u2][0], u2, "b", "good-2")),
    ]
    V._VoteWriter(store.engine)._write(batch)
    assert batch[0].future.result().result.vote_id > 0
    assert batch[1].future.exception() is not None
    assert batch[2].future.result().result.vote_id > 0
    with store.sessions() as s:
        assert set(s.scalars(select(Vote.idempotency_key))) == {"good-1", "good-2"}
        assert s.scalar(select(func.sum(Comparison.vote_count))) == 2


def test_votes_wait_for_the_write_lock_and_commit_together(world, caplog):
    store, users, served = world
    writer = V._writer_for(store.engine)
    blocker = store.engine.connect()
    blocker.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: holds the write lock
    try:
        pendings = [
            _pending(V.VoteRequest(cid, u, "a", f"lock-{u}-{cid}")) for u in users for cid in served[u]
        ]
        with caplog.at_level(logging.DEBUG, logger="annotation.store.votes"):
            futures = [writer.submit(p) for p in pendings]
            time.sleep(0.3)
            assert not any(f.done() for f in futures)  # nothing acknowledged before its commit
            blocker.rollback()
            results = [f.result(timeout=30).result for f in futures]
    finally:
        blocker.close()
    assert len({r.vote_id for r in results}) == len(pendings)
    sizes = [r.args[0] for r in caplog.records if r.msg.startswith("committed a batch")]
    assert sum(sizes) == len(pendings) and len(sizes) <= 2  # the first batch, then everything queued
    with store.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Vote)) == len(pendings)


def test_record_vote_refreshes_objects_of_the_callers_session(world):
    store, (u1, _, _), served = world
    cid = served[u1][0]
    with store.sessions() as s:
        comp = s.get(Comparison, cid)
        assert comp.vote_count == 0
        s.commit()
        V.record_vote(s, V.VoteRequest(cid, u1, "b", "fresh"))
        assert comp.vote_count == 1  # expired by record_vote, reloaded here
        V.undo_last_vote(s, u1)
        assert s.get(Comparison, cid).vote_count == 0


def test_in_session_path_matches_group_commit(world):
    store, (u1, _, _), served = world
    with store.sessions() as s:
        first = V.record_vote(s, V.VoteRequest(served[u1][0], u1, "a", "direct"), group_commit=False)
        assert V.record_vote(s, V.VoteRequest(served[u1][0], u1, "a", "direct"), group_commit=False).replayed
        with pytest.raises(DuplicateVote):
            V.record_vote(s, V.VoteRequest(served[u1][0], u1, "b", "direct-2"), group_commit=False)
        assert V.record_vote(s, V.VoteRequest(served[u1][0], u1, "a", "direct")).vote_id == first.vote_id


def test_serving_a_pending_pair_does_not_need_the_write_lock(world):
    store, (u1, _, _), _ = world
    with store.sessions() as s:
        pending = S.next_comparison(s, u1, gold_rate=0.0)
    impatient = make_engine(store.url, busy_timeout_ms=200)
    sessions = make_session_factory(impatient)
    blocker = store.engine.connect()
    blocker.execute(text("SELECT 1"))  # another process is writing
    try:
        with sessions() as s:
            again = S.next_comparison(s, u1, gold_rate=0.0)  # a reload: read only
            assert again.comparison_id == pending.comparison_id
            assert again.assignment_id == pending.assignment_id
    finally:
        blocker.rollback()
        blocker.close()
        impatient.dispose()


@pytest.mark.postgres
def test_group_commit_on_postgres(tmp_path):
    import os

    from store_fixtures import PG_URL_ENV, open_test_store

    if not os.environ.get(PG_URL_ENV):
        pytest.skip(f"{PG_URL_ENV} is not set")
    store = open_test_store("postgres", tmp_path)
    try:
        _, ids = small_world(store, candidates=12, annotators=2)
        u1, u2 = ids["annotator1"], ids["annotator2"]
        with store.sessions() as s:
            c1 = S.next_comparison(s, u1, gold_rate=0.0).comparison_id
            c2 = S.next_comparison(s, u2, gold_rate=0.0).comparison_id
        batch = [
            _pending(V.VoteRequest(c1, u1, "a", "pg-1")),
            _pending(V.VoteRequest(c1, u1, "a", "pg-1")),
            _pending(V.VoteRequest(c2, u2, "b", "pg-1")),
            _pending(V.VoteRequest(c2, u2, "b", "pg-2")),
        ]
        V._VoteWriter(store.engine)._write(batch)
        first = batch[0].future.result().result
        assert batch[1].future.result().result.replayed
        assert isinstance(batch[2].future.exception(), InvalidVote)
        assert not batch[3].future.result().result.replayed
        with store.sessions() as s:
            assert (
                V.record_vote(s, V.VoteRequest(c1, u1, "a", "pg-1"), group_commit=True).vote_id
                == first.vote_id
            )
            with pytest.raises(DuplicateVote):
                V.record_vote(s, V.VoteRequest(c2, u2, "a", "pg-3"), group_commit=True)
            assert s.scalar(select(func.sum(Comparison.vote_count))) == 2
    finally:
        store.engine.dispose()
