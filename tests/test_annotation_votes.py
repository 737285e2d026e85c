"""Users, candidates, sampling, votes, undo, skip, badcases and visitor data deletion (SQLite, and
PostgreSQL with the ``postgres`` marker)."""

from __future__ import annotations

import os
import random
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from store_fixtures import PG_URL_ENV, open_test_store, pattern_image, small_world

from annotation.store import candidates as C
from annotation.store import sampling as S
from annotation.store import users as U
from annotation.store import votes as V
from annotation.store.errors import (
    AuthenticationError,
    DuplicateVote,
    InvalidVote,
    NotFound,
    PermissionDenied,
)
from db.models import Assignment, Badcase, Comparison, GenerationSubject, Vote
from db.types import utcnow
from idglow.errors import InputError

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    if request.param == "postgres" and not os.environ.get(PG_URL_ENV):
        pytest.skip(f"{PG_URL_ENV} is not set")
    st = open_test_store(request.param, tmp_path)
    yield st
    st.engine.dispose()


def _snapshot(session):
    return (
        session.scalar(select(func.count()).select_from(Vote)),
        session.scalar(select(func.sum(Comparison.vote_count))),
        tuple(session.execute(select(Assignment.id, Assignment.status).order_by(Assignment.id)).all()),
    )


def test_users_roles_and_authentication(store):
    with store.sessions() as s:
        u = U.create_user(s, "ann", "correct horse", "annotator")
        assert U.authenticate(s, "ann", "correct horse").id == u.id
        with pytest.raises(AuthenticationError):
            U.authenticate(s, "ann", "wrong password")
        with pytest.raises(AuthenticationError):
            U.authenticate(s, "nobody", "correct horse")
        with pytest.raises(InputError, match="'boss'"):
            U.create_user(s, "x", "long enough", "boss")
        with pytest.raises(InputError, match="too short"):
            U.create_user(s, "y", "short", "annotator")
        with pytest.raises(InputError, match="already exists"):
            U.create_user(s, "ann", "another password", "admin")
        stored = s.scalar(select(U.User.password_hash).where(U.User.username == "ann"))
        assert stored.startswith("$argon2") and "correct horse" not in stored
        assert not U.has_role(u, "researcher")


def test_register_generation_candidates_dedupe_and_pool(store, tmp_path):
    with store.sessions() as s:
        C.register_model_version(s, "v1")
        C.register_model_version(s, "v2")
        with pytest.raises(InputError, match="already exists"):
            C.register_model_version(s, "v1")
        with pytest.raises(Exception, match="config.json"):
            C.register_model_version(s, "v3", tmp_path / "missing")
        gens = []
        for mv in ("v1", "v2"):
            rec = C.GenerationRecord(
                task="fusion",
                final_prompt="two friends",
                model_version=mv,
                subjects=[C.SubjectRecord(pattern_image(100)), C.SubjectRecord(pattern_image(101))],
            )
            gens.append(C.register_generation(s, rec, store.data_dir))
        assert gens[0].subjects_key == gens[1].subjects_key
        c1 = C.add_candidates(
            s, gens[0].id, [C.CandidateRecord(pattern_image(i), seed=i) for i in range(3)], store.data_dir
        )
        again = C.add_candidates(s, gens[0].id, [C.CandidateRecord(pattern_image(0), seed=0)], store.data_dir)
        assert again[0].id == c1[0].id  # same image in the same generation → same row
        c2 = C.add_candidates(s, gens[1].id, [C.CandidateRecord(pattern_image(0), seed=7)], store.data_dir)
        assert c2[0].image_path == c1[0].image_path  # one file for both rows
        sha = c1[0].image_sha256
        assert (store.data_dir / "images" / sha[:2] / f"{sha}.png").is_file()
        created = C.add_to_pool(s, [c.id for c in c1 + c2])
        kinds = Counter(k for (k,) in s.execute(select(Comparison.kind)))
        assert kinds["within_generation"] == 3 and kinds["cross_model"] == 3 and created == 6
        C.remove_from_pool(s, [c1[0].id])
        assert s.scalar(select(func.count()).select_from(Comparison).where(Comparison.active.is_(True))) == 3


def test_sampling_overlap_no_repeats_and_balance(store):
    _, ids = small_world(store, candidates=8, annotators=5)  # 2 generations × 4 → few comparisons
    users = [ids[f"annotator{k}"] for k in range(1, 6)]
    rng = random.Random(1)
    seen = {u: set() for u in users}
    with store.sessions() as s:
        total = s.scalar(select(func.count()).select_from(Comparison))
        for _ in range(200):
            u = rng.choice(users)
            served = S.next_comparison(s, u, overlap=2, gold_rate=0.0, rng=rng)
            if served is None:
                continue
            assert served.comparison_id not in seen[u]
            seen[u].add(served.comparison_id)
            V.record_vote(
                s,
                V.VoteRequest(
                    served.comparison_id, u, served.choice_for_side("left"), f"k{u}-{served.comparison_id}"
                ),
            )
        counts = dict(s.execute(select(Comparison.id, Comparison.vote_count)).all())
        assert max(counts.values()) <= 2
        assert sum(counts.values()) == 2 * total  # everything got its two votes, then sampling stopped
        assert all(S.next_comparison(s, u, overlap=2, gold_rate=0.0) is None for u in users)
        # "left" clicks map to candidate A exactly when A was shown left: votes store candidates, not sides
        rows = s.execute(
            select(Vote.overall, Vote.shown_left_id, Comparison.candidate_a_id).join(Comparison)
        ).all()
        assert all((o.value == "a") == (left == a) for o, left, a in rows)


def test_gold_rate_and_left_right_balance(store):
    _, ids = small_world(store, candidates=96, annotators=2)
    with store.sessions() as s:
        comp_ids = list(s.scalars(select(Comparison.id).order_by(Comparison.id)))
        admin = U.create_user(s, "boss", "admin password", "admin")
        for cid in comp_ids[:150]:
            C.set_gold(s, cid, "a", by_user_id=admin.id)
        user = ids["annotator1"]
        rng = random.Random(0)
        gold = left_a = 0
        draws = 300
        for _ in range(draws):
            served = S.next_comparison(s, user, gold_rate=0.25, rng=rng)
            gold += served.is_gold
            left_a += served.left.candidate_id == served.candidate_a_id
            S.skip_comparison(s, user, served.comparison_id)
        assert abs(gold / draws - 0.25) < 0.07
        assert abs(left_a / draws - 0.5) < 0.1
        # skipped pairs never come back; nothing was voted
        assert (
            s.scalar(
                select(func.count(func.distinct(Assignment.comparison_id))).where(Assignment.user_id == user)
            )
            == draws
        )
        with pytest.raises(PermissionDenied):
            C.set_gold(s, comp_ids[200], "b", by_user_id=user)


def test_bad_votes_change_nothing(store):
    _, ids = small_world(store, candidates=8, annotators=2)
    u1, u2 = ids["annotator1"], ids["annotator2"]
    with store.sessions() as s:
        served = S.next_comparison(s, u1, gold_rate=0.0, rng=random.Random(0))
        other = s.scalar(select(Comparison.id).where(Comparison.id != served.comparison_id).limit(1))
        admin = U.create_user(s, "boss", "admin password", "admin")
        C.set_gold(s, other, "b", by_user_id=admin.id)
        before = _snapshot(s)
        cid = served.comparison_id
        bad = [
            (V.VoteRequest(999_999, u1, "a", "k1"), NotFound),
            (V.VoteRequest(cid, 999_999, "a", "k2"), NotFound),
            (V.VoteRequest(cid, u1, "left", "k3"), InvalidVote),
            (V.VoteRequest(cid, u1, "a", "k4", answers={"strength": "huge"}), InvalidVote),
            (V.VoteRequest(cid, u1, "tie", "k5", answers={"strength": "clear"}), InvalidVote),
            (V.VoteRequest(cid, u1, "a", "k6", answers={"identity": {served.num_subjects: "a"}}), InvalidVote),
            (V.VoteRequest(cid, u1, "a", "k7", answers={"texture": "maybe"}), InvalidVote),
            (V.VoteRequest(cid, u1, "a", ""), InvalidVote),
            (V.VoteRequest(cid, u2, "a", "k8"), InvalidVote),  # not served to u2
            (V.VoteRequest(other, u1, "b", "k9"), InvalidVote),  # gold answer key, not served
        ]
        for request, error in bad:
            with pytest.raises(error):
                V.record_vote(s, request)
            assert _snapshot(s) == before, request
        with pytest.raises(InvalidVote, match=f"slot {served.num_subjects}"):
            V.record_vote(s, V.VoteRequest(cid, u1, "a", "k6", answers={"identity": {served.num_subjects: "a"}}))
        ok = V.record_vote(
            s, V.VoteRequest(cid, u1, "b", "good", answers={"strength": "slight", "identity": {0: "b"}},
                             duration_ms=1200)
        )
        assert not ok.replayed
        assert V.record_vote(s, V.VoteRequest(cid, u1, "b", "good")).vote_id == ok.vote_id
        with pytest.raises(DuplicateVote):
            V.record_vote(s, V.VoteRequest(cid, u1, "a", "another-key"))
        with pytest.raises(InvalidVote, match="already used"):
            served2 = S.next_comparison(s, u2, gold_rate=0.0)
            V.record_vote(s, V.VoteRequest(served2.comparison_id, u2, "a", "good"))
        assert s.scalar(select(func.count()).select_from(Vote)) == 1


def test_undo_last_vote_and_badcase(store):
    _, ids = small_world(store, candidates=8, annotators=1)
    u = ids["annotator1"]
    with store.sessions() as s:
        served = S.next_comparison(s, u, gold_rate=0.0)
        V.record_vote(s, V.VoteRequest(served.comparison_id, u, "a", "u1"))
        undone = V.undo_last_vote(s, u)
        assert undone.comparison_id == served.comparison_id
        assert s.get(Comparison, served.comparison_id).vote_count == 0
        again = S.next_comparison(s, u, gold_rate=0.0)
        assert again.comparison_id == served.comparison_id  # shown again after undo
        V.record_vote(s, V.VoteRequest(again.comparison_id, u, "b", "u2"), now=utcnow() - timedelta(hours=1))
        with pytest.raises(V.UndoExpired):
            V.undo_last_vote(s, u, within=timedelta(minutes=5))
        b = V.flag_badcase(
            s, served.candidate_a_id, ["identity_swap", "artifact"], "faces swapped", user_id=u
        )
        assert s.get(Badcase, b.id).failure_types == ["identity_swap", "artifact"]
        with pytest.raises(InputError, match="'melted'"):
            V.flag_badcase(s, served.candidate_a_id, ["melted"])
        with pytest.raises(NotFound):
            V.flag_badcase(s, 10**9, ["artifact"])


def test_undo_after_moving_on_shows_the_undone_pair_then_the_interrupted_one_unskipped(store):
    """Vote, the next pair is served, undo: the undone pair comes back first; the pair it interrupted is neither
    skipped nor lost, and is served right after the undone one is voted again."""
    from db.models import AssignmentStatus

    _, ids = small_world(store, candidates=8, annotators=1)
    u = ids["annotator1"]
    with store.sessions() as s:
        first = S.next_comparison(s, u, gold_rate=0.0)
        V.record_vote(s, V.VoteRequest(first.comparison_id, u, "a", "m1"))
        moved_on = S.next_comparison(s, u, gold_rate=0.0)
        assert moved_on.comparison_id != first.comparison_id
        V.undo_last_vote(s, u)
        assert S.next_comparison(s, u, gold_rate=0.0).comparison_id == first.comparison_id
        status = s.scalar(select(Assignment.status).where(Assignment.user_id == u,
                                                          Assignment.comparison_id == moved_on.comparison_id))
        assert status == AssignmentStatus.open
        V.record_vote(s, V.VoteRequest(first.comparison_id, u, "b", "m2"))
        assert S.next_comparison(s, u, gold_rate=0.0).comparison_id == moved_on.comparison_id


def test_undo_returns_the_answers_of_the_undone_vote(store):
    _, ids = small_world(store, candidates=8, annotators=1)
    u = ids["annotator1"]
    with store.sessions() as s:
        served = S.next_comparison(s, u, gold_rate=0.0)
        identity = {i: "b" if i % 2 else "tie" for i in range(served.num_subjects)}
        V.record_vote(s, V.VoteRequest(served.comparison_id, u, "a", "k1", answers={
            "strength": "clear", "identity": identity, "texture": "b", "artifacts": "tie"}))
        undone = V.undo_last_vote(s, u)
        assert (undone.overall, undone.strength, undone.texture, undone.artifacts) == ("a", "clear", "b", "tie")
        assert undone.identity == identity
        again = S.next_comparison(s, u, gold_rate=0.0)
        V.record_vote(s, V.VoteRequest(again.comparison_id, u, "both_bad", "k2"))
        bare = V.undo_last_vote(s, u)
        assert (bare.overall, bare.strength, bare.texture, bare.artifacts, bare.identity) == (
            "both_bad", None, None, None, {})


def test_served_sides_map_both_ways_and_carry_target_ages(store):
    _, ids = small_world(store, candidates=8, annotators=1)
    u = ids["annotator1"]
    with store.sessions() as s:
        s.execute(update(GenerationSubject).values(target_age=GenerationSubject.slot * 10 + 6.0))
        s.commit()
        served = S.next_comparison(s, u, gold_rate=0.0)
    assert served.target_ages == tuple(slot * 10 + 6.0 for slot in range(served.num_subjects))
    for side in ("left", "right"):
        assert served.side_for_choice(served.choice_for_side(side)) == side
    assert {served.choice_for_side("left"), served.choice_for_side("right")} == {"a", "b"}
    assert served.side_for_choice("tie") == "tie"


def test_delete_visitor_data_and_sweep(store):
    with store.sessions() as s:
        C.register_model_version(s, "v1")

        def gen(visitor, expires=None, img=0):
            rec = C.GenerationRecord(
                task="age",
                final_prompt="p",
                model_version="v1",
                visitor_id=visitor,
                expires_at=expires,
                subjects=[C.SubjectRecord(pattern_image(500 + img), target_age=6)],
            )
            g = C.register_generation(s, rec, store.data_dir)
            C.add_candidates(
                s,
                g.id,
                [C.CandidateRecord(pattern_image(600 + img + i), seed=i) for i in range(2)],
                store.data_dir,
                in_pool=True,
            )
            return g

        gen("alice", img=0)
        gen("bob", img=10)
        gen("carol", expires=utcnow() - timedelta(days=1), img=20)
        files_before = set(store.data_dir.glob("images/*/*.png"))
        res = C.delete_visitor_data(s, "alice", store.data_dir)
        assert (res.generations, res.reference_photos, res.files) == (1, 1, 3)
        swept = C.sweep_expired(s, utcnow(), store.data_dir)
        assert swept.generations == 1
        files_after = set(store.data_dir.glob("images/*/*.png"))
        assert len(files_before) - len(files_after) == 6
        assert s.scalar(select(func.count()).select_from(Comparison)) == 1  # bob's pair only
