"""Agreement and leaderboard on constructed votes with known answers."""

from __future__ import annotations

from itertools import count

import pytest
from sqlalchemy import insert, select
from store_fixtures import make_store, small_world

from annotation.store import stats
from db.models import Assignment, Candidate, Comparison, Generation, ModelVersion, Vote
from db.types import utcnow


def _vote_all(store, users, choose):
    """Insert one vote per (comparison, user) with ``choose(comparison_row, user) -> overall``."""
    keys = count()
    with store.sessions() as s:
        rows = s.execute(
            select(
                Comparison.id,
                Comparison.candidate_a_id,
                Comparison.candidate_b_id,
                Generation.model_version_id,
            )
            .join(Candidate, Candidate.id == Comparison.candidate_a_id)
            .join(Generation, Generation.id == Candidate.generation_id)
        ).all()
        mv_of = dict(s.execute(select(Candidate.id, Generation.model_version_id).join(Generation)).all())
        now = utcnow()
        votes, assigns = [], []
        for cid, a, b, _ in rows:
            for u in users:
                overall = choose(mv_of[a], mv_of[b], u)
                votes.append(
                    dict(
                        comparison_id=cid,
                        user_id=u,
                        overall=overall,
                        shown_left_id=a,
                        idempotency_key=f"c{next(keys)}",
                        created_at=now,
                        texture="a" if overall == "a" else "b",
                    )
                )
                assigns.append(
                    dict(comparison_id=cid, user_id=u, shown_left_id=a, status="voted", created_at=now)
                )
            s.execute(Comparison.__table__.update().where(Comparison.id == cid).values(vote_count=len(users)))
        s.execute(insert(Vote), votes)
        s.execute(insert(Assignment), assigns)
        s.commit()
        return dict(s.execute(select(ModelVersion.name, ModelVersion.id)).all())


def test_leaderboard_model_that_always_wins_ranks_first(tmp_path):
    store = make_store(tmp_path)
    small_world(store, candidates=72, annotators=3)
    with store.sessions() as s:
        names = dict(s.execute(select(ModelVersion.id, ModelVersion.name)).all())
    best = next(i for i, n in names.items() if n == "demo-base")  # the worst true quality, made to win always
    other = next(i for i, n in names.items() if n == "demo-sft")

    def choose(mv_a, mv_b, u):
        if best in (mv_a, mv_b) and mv_a != mv_b:
            return "a" if mv_a == best else "b"
        if other in (mv_a, mv_b) and mv_a != mv_b:
            return "a" if mv_a == other else "b"
        return "tie"

    _vote_all(store, [1, 2, 3], choose)
    with store.sessions() as s:
        board = stats.leaderboard(s, n_bootstrap=100)
    assert [r.model for r in board] == ["demo-base", "demo-sft", "demo-dpo"]
    assert board[0].losses == 0 and board[0].wins > 0
    assert board[0].ci_low > max(r.ci_high for r in board[1:])
    assert all(r.ci_low <= r.score <= r.ci_high for r in board)


def test_agreement_perfect_and_chance(tmp_path):
    store = make_store(tmp_path)
    small_world(store, candidates=24, annotators=3)
    _vote_all(store, [1, 2, 3], lambda a, b, u: "a")  # everyone agrees... on one category only
    with store.sessions() as s:
        assert stats.agreement(s)["overall"].alpha == 1.0
        s.execute(Vote.__table__.delete())
        s.execute(Assignment.__table__.delete())
        s.commit()
    import random

    rng = random.Random(0)

    def choose(a, b, u):  # two annotators always say "a", the third flips coins
        return rng.choice(["a", "b"]) if u == 3 else "a"

    _vote_all(store, [1, 2, 3], choose)
    with store.sessions() as s:
        result = stats.agreement(s)
        assert result["overall"].units > 10
        assert result["overall"].alpha < 0.9
        per_user = {a.user_id: a for a in stats.annotator_stats(s)}
        assert per_user[1].votes == per_user[3].votes > 0
    with store.sessions() as s, pytest.raises(ValueError, match="'speed'"):
        stats.agreement(s, dimensions=("speed",))


def test_gold_accuracy(tmp_path):
    import random as _r

    from annotation.store import candidates as C
    from annotation.store import sampling as S
    from annotation.store import users as U
    from annotation.store import votes as V

    store = make_store(tmp_path)
    _, ids = small_world(store, candidates=12, annotators=1)
    u = ids["annotator1"]
    with store.sessions() as s:
        admin = U.create_user(s, "boss", "admin password", "admin")
        for cid in s.scalars(select(Comparison.id)).all():
            C.set_gold(s, cid, "a", by_user_id=admin.id)
        for i in range(10):
            served = S.next_comparison(s, u, gold_rate=1.0, rng=_r.Random(i))
            V.record_vote(s, V.VoteRequest(served.comparison_id, u, "a" if i < 7 else "b", f"g{i}"))
        st = stats.annotator_stats(s)[0]
        assert (st.gold_votes, st.gold_correct) == (10, 7) and st.gold_accuracy == pytest.approx(0.7)
