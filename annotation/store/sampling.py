"""Which comparison an annotator sees next.

``next_comparison`` serves each non-gold comparison to at most ``overlap`` annotators (votes plus
unexpired reservations), never serves a comparison twice to the same user, mixes in gold items at
``gold_rate`` and randomises the side of candidate A, recording it in the assignment (and later the vote).
Comparisons that already have votes are preferred, so that pairs reach ``overlap`` votes (and an agreement
figure) before new pairs are opened.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import exists, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from annotation.store.errors import NotFound
from annotation.store.users import get_user
from db.engine import read_only
from db.models import (
    Assignment,
    AssignmentStatus,
    Candidate,
    Comparison,
    Generation,
    GenerationSubject,
    ReferencePhoto,
)
from db.types import utcnow

logger = logging.getLogger(__name__)

DEFAULT_OVERLAP = 3
DEFAULT_GOLD_RATE = 0.1
DEFAULT_RESERVATION = timedelta(minutes=30)
_PAGE = 32


@dataclass(frozen=True)
class ShownCandidate:
    """A candidate as served to an annotator."""

    candidate_id: int
    image_path: str  # relative to the data dir
    apparent_ages: tuple[float | None, ...] = ()  # per slot, from the face analyzer (empty: none measured)


@dataclass(frozen=True)
class ServedComparison:
    """A comparison as an annotator sees it. ``left``/``right`` are screen sides; votes are given in terms
    of candidates A and B, use :meth:`choice_for_side` to translate a click."""

    assignment_id: int
    comparison_id: int
    candidate_a_id: int
    candidate_b_id: int
    left: ShownCandidate
    right: ShownCandidate
    prompt: str
    task: str
    num_subjects: int
    subject_labels: tuple[str | None, ...]
    reference_paths: tuple[str | None, ...]
    is_gold: bool
    target_ages: tuple[float | None, ...] = ()  # per slot; empty or None entries: no target age

    def choice_for_side(self, side: str) -> str:
        """'left'/'right' → 'a'/'b' for this assignment (other values are returned unchanged)."""
        if side not in ("left", "right"):
            return side
        cid = self.left.candidate_id if side == "left" else self.right.candidate_id
        return "a" if cid == self.candidate_a_id else "b"

    def side_for_choice(self, choice: str) -> str:
        """'a'/'b' → 'left'/'right' on this assignment's screen (the inverse of :meth:`choice_for_side`;
        other values are returned unchanged)."""
        if choice not in ("a", "b"):
            return choice
        cid = self.candidate_a_id if choice == "a" else self.candidate_b_id
        return "left" if cid == self.left.candidate_id else "right"


@dataclass(frozen=True)
class _Pair:
    """What an annotator is shown of a comparison, before a side is chosen."""

    comparison_id: int
    is_gold: bool
    a: ShownCandidate
    b: ShownCandidate
    prompt: str
    task: str
    num_subjects: int
    subject_labels: tuple[str | None, ...]
    reference_paths: tuple[str | None, ...]
    target_ages: tuple[float | None, ...]

    def served(self, assignment_id: int, shown_left_id: int) -> ServedComparison:
        left, right = (self.a, self.b) if shown_left_id == self.a.candidate_id else (self.b, self.a)
        return ServedComparison(
            assignment_id=assignment_id,
            comparison_id=self.comparison_id,
            candidate_a_id=self.a.candidate_id,
            candidate_b_id=self.b.candidate_id,
            left=left,
            right=right,
            prompt=self.prompt,
            task=self.task,
            num_subjects=self.num_subjects,
            subject_labels=self.subject_labels,
            reference_paths=self.reference_paths,
            is_gold=self.is_gold,
            target_ages=self.target_ages,
        )


def _pair(session: Session, comparison_id: int) -> _Pair:
    """The comparison, both candidates, the generation and its subjects in two queries."""
    ca, cb = aliased(Candidate), aliased(Candidate)
    row = session.execute(
        select(
            Comparison.id,
            Comparison.is_gold,
            ca.id.label("a_id"),
            ca.image_path.label("a_path"),
            cb.id.label("b_id"),
            cb.image_path.label("b_path"),
            ca.face_matches.label("a_matches"),
            cb.face_matches.label("b_matches"),
            Generation.id.label("generation_id"),
            Generation.final_prompt,
            Generation.task,
            Generation.num_subjects,
        )
        .join(ca, ca.id == Comparison.candidate_a_id)
        .join(cb, cb.id == Comparison.candidate_b_id)
        .join(Generation, Generation.id == ca.generation_id)
        .where(Comparison.id == comparison_id)
    ).one()
    subjects = session.execute(
        select(GenerationSubject.label, ReferencePhoto.path, GenerationSubject.target_age)
        .outerjoin(ReferencePhoto, ReferencePhoto.id == GenerationSubject.reference_photo_id)
        .where(GenerationSubject.generation_id == row.generation_id)
        .order_by(GenerationSubject.slot)
    ).all()
    return _Pair(
        comparison_id=row.id,
        is_gold=row.is_gold,
        a=ShownCandidate(row.a_id, row.a_path, _apparent_ages(row.a_matches)),
        b=ShownCandidate(row.b_id, row.b_path, _apparent_ages(row.b_matches)),
        prompt=row.final_prompt,
        task=row.task.value,
        num_subjects=row.num_subjects,
        subject_labels=tuple(s.label for s in subjects),
        reference_paths=tuple(s.path for s in subjects),
        target_ages=tuple(s.target_age for s in subjects),
    )


def _apparent_ages(face_matches: dict | None) -> tuple[float | None, ...]:
    """Each person's apparent age in a candidate, from its stored face match (``FaceMatch.to_dict``)."""
    ages = (face_matches or {}).get("ages") or ()
    return tuple(None if a is None else float(a) for a in ages)


def _open_reservations(session: Session, ids: list[int], cutoff: datetime) -> dict[int, int]:
    rows = session.execute(
        select(Assignment.comparison_id, func.count())
        .where(
            Assignment.comparison_id.in_(ids),
            Assignment.status == AssignmentStatus.open,
            Assignment.created_at >= cutoff,
        )
        .group_by(Assignment.comparison_id)
    )
    return dict(rows.all())


def _pick_regular(
    session: Session, user_id: int, overlap: int, cutoff: datetime, rng: random.Random
) -> int | None:
    seen = exists().where(Assignment.comparison_id == Comparison.id, Assignment.user_id == user_id)
    base = (
        select(Comparison.id, Comparison.vote_count)
        .where(Comparison.is_gold.is_(False), Comparison.active.is_(True), Comparison.vote_count < overlap)
        .where(~seen)
        # descending on both keys: SQLite walks ix_comparisons_sampling backwards and stops after a page,
        # instead of sorting every open comparison
        .order_by(Comparison.vote_count.desc(), Comparison.id.desc())
    )
    offset = 0
    while True:
        rows = session.execute(base.offset(offset).limit(_PAGE)).all()
        if not rows:
            return None
        reserved = _open_reservations(session, [r[0] for r in rows], cutoff)
        free = [(cid, n) for cid, n in rows if n + reserved.get(cid, 0) < overlap]
        if free:
            top = max(n for _, n in free)
            return rng.choice([cid for cid, n in free if n == top])
        offset += _PAGE


def _pick_gold(session: Session, user_id: int, rng: random.Random) -> int | None:
    seen = exists().where(Assignment.comparison_id == Comparison.id, Assignment.user_id == user_id)
    ids = session.scalars(
        select(Comparison.id)
        .where(Comparison.is_gold.is_(True), Comparison.active.is_(True))
        .where(~seen)
        .order_by(Comparison.id)
        .limit(_PAGE)
    ).all()
    return rng.choice(ids) if ids else None


def next_comparison(
    session: Session,
    user_id: int,
    *,
    overlap: int = DEFAULT_OVERLAP,
    gold_rate: float = DEFAULT_GOLD_RATE,
    reservation: timedelta = DEFAULT_RESERVATION,
    rng: random.Random | None = None,
    now: datetime | None = None,
) -> ServedComparison | None:
    """The comparison ``user_id`` should judge next, or None when nothing is left for them.

    A comparison served and not yet voted or skipped is served again (a reload shows the same pair).
    The choice is made in a read transaction; only the reservation itself is written, in a short write
    transaction that checks the capacity again (another request may have taken the last place meanwhile,
    then the next comparison is chosen).
    """
    if overlap < 1:
        raise ValueError(f"overlap must be >= 1, got {overlap}")
    if not 0.0 <= gold_rate <= 1.0:
        raise ValueError(f"gold_rate must be in [0, 1], got {gold_rate}")
    rng = rng or random.Random()
    now = now or utcnow()
    cutoff = now - reservation
    while True:
        try:
            if not session.in_transaction():
                read_only(session)
            get_user(session, user_id)
            pending = session.execute(
                select(Assignment.id, Assignment.comparison_id, Assignment.shown_left_id)
                .where(Assignment.user_id == user_id, Assignment.status == AssignmentStatus.open)
                # the latest opened first: a pair reopened by undo comes before the one it interrupted
                .order_by(Assignment.created_at.desc(), Assignment.id.desc())
                .limit(1)
            ).first()
            if pending is not None:
                served = _pair(session, pending.comparison_id).served(pending.id, pending.shown_left_id)
                session.commit()
                return served
            comparison_id = _pick_gold(session, user_id, rng) if rng.random() < gold_rate else None
            if comparison_id is None:
                comparison_id = _pick_regular(session, user_id, overlap, cutoff, rng)
            pair = _pair(session, comparison_id) if comparison_id is not None else None
            session.commit()  # end the read
        except BaseException:
            session.rollback()
            raise
        if pair is None:
            return None
        served = _reserve(session, pair, user_id, overlap, cutoff, rng, now)
        if served is not None:
            return served


def _reserve(
    session: Session,
    pair: _Pair,
    user_id: int,
    overlap: int,
    cutoff: datetime,
    rng: random.Random,
    now: datetime,
) -> ServedComparison | None:
    """Write the assignment of ``pair`` to ``user_id``; None when the comparison was taken meanwhile."""
    left = pair.a.candidate_id if rng.random() < 0.5 else pair.b.candidate_id
    try:
        comp = session.execute(
            select(Comparison.active, Comparison.vote_count)
            .where(Comparison.id == pair.comparison_id)
            .with_for_update()
        ).first()
        if comp is None or not comp.active:
            session.rollback()
            return None
        if not pair.is_gold:
            # re-check capacity under the lock (another request or server process may have served it)
            reserved = _open_reservations(session, [pair.comparison_id], cutoff).get(pair.comparison_id, 0)
            if comp.vote_count + reserved >= overlap:
                session.rollback()
                return None
        assignment_id = session.execute(
            insert(Assignment)
            .values(
                comparison_id=pair.comparison_id,
                user_id=user_id,
                shown_left_id=left,
                status=AssignmentStatus.open,
                created_at=now,
            )
            .returning(Assignment.id)
        ).scalar_one()
        session.commit()
    except IntegrityError:  # the same user asked twice at once: the next round serves what the other reserved
        session.rollback()
        return None
    except BaseException:
        session.rollback()
        raise
    return pair.served(assignment_id, left)


def skip_comparison(session: Session, user_id: int, comparison_id: int) -> None:
    """The user passes on a served comparison; it is not served to them again."""
    assignment = session.scalar(
        select(Assignment).where(Assignment.user_id == user_id, Assignment.comparison_id == comparison_id)
    )
    if assignment is None:
        session.rollback()
        raise NotFound(f"comparison {comparison_id!r} was not served to user {user_id!r}")
    if assignment.status == AssignmentStatus.open:
        assignment.status = AssignmentStatus.skipped
    session.commit()
