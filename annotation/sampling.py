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

from sqlalchemy import exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotation.errors import NotFound
from annotation.users import get_user
from db.models import Assignment, AssignmentStatus, Candidate, Comparison, Generation, GenerationSubject
from db.types import utcnow

logger = logging.getLogger(__name__)

DEFAULT_OVERLAP = 3
DEFAULT_GOLD_RATE = 0.1
DEFAULT_RESERVATION = timedelta(minutes=30)
_PAGE = 32


@dataclass(frozen=True)
class ShownCandidate:
    candidate_id: int
    image_path: str  # relative to the data dir


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

    def choice_for_side(self, side: str) -> str:
        """'left'/'right' → 'a'/'b' for this assignment (other values are returned unchanged)."""
        if side not in ("left", "right"):
            return side
        cid = self.left.candidate_id if side == "left" else self.right.candidate_id
        return "a" if cid == self.candidate_a_id else "b"


def _served(session: Session, assignment: Assignment) -> ServedComparison:
    comp = session.get(Comparison, assignment.comparison_id)
    ca = session.get(Candidate, comp.candidate_a_id)
    cb = session.get(Candidate, comp.candidate_b_id)
    left, right = (ca, cb) if assignment.shown_left_id == ca.id else (cb, ca)
    gen = session.get(Generation, ca.generation_id)
    subjects = session.scalars(
        select(GenerationSubject)
        .where(GenerationSubject.generation_id == gen.id)
        .order_by(GenerationSubject.slot)
    ).all()
    return ServedComparison(
        assignment_id=assignment.id,
        comparison_id=comp.id,
        candidate_a_id=ca.id,
        candidate_b_id=cb.id,
        left=ShownCandidate(left.id, left.image_path),
        right=ShownCandidate(right.id, right.image_path),
        prompt=gen.final_prompt,
        task=gen.task.value,
        num_subjects=gen.num_subjects,
        subject_labels=tuple(s.label for s in subjects),
        reference_paths=tuple(s.reference_photo.path if s.reference_photo else None for s in subjects),
        is_gold=comp.is_gold,
    )


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
        .order_by(Comparison.vote_count.desc(), Comparison.id)
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
    """
    if overlap < 1:
        raise ValueError(f"overlap must be >= 1, got {overlap}")
    if not 0.0 <= gold_rate <= 1.0:
        raise ValueError(f"gold_rate must be in [0, 1], got {gold_rate}")
    rng = rng or random.Random()
    now = now or utcnow()
    get_user(session, user_id)
    pending = session.scalar(
        select(Assignment)
        .where(Assignment.user_id == user_id, Assignment.status == AssignmentStatus.open)
        .order_by(Assignment.id.desc())
        .limit(1)
    )
    if pending is not None:
        served = _served(session, pending)
        session.commit()
        return served

    cutoff = now - reservation
    comparison_id = _pick_gold(session, user_id, rng) if rng.random() < gold_rate else None
    if comparison_id is None:
        comparison_id = _pick_regular(session, user_id, overlap, cutoff, rng)
    if comparison_id is None:
        session.commit()
        return None
    comp = session.scalar(select(Comparison).where(Comparison.id == comparison_id).with_for_update())
    if not comp.is_gold:
        # re-check capacity under the row lock (another server process may have served it meanwhile)
        taken = comp.vote_count + _open_reservations(session, [comp.id], cutoff).get(comp.id, 0)
        if taken >= overlap:
            session.rollback()
            return next_comparison(
                session,
                user_id,
                overlap=overlap,
                gold_rate=gold_rate,
                reservation=reservation,
                rng=rng,
                now=now,
            )
    left = comp.candidate_a_id if rng.random() < 0.5 else comp.candidate_b_id
    assignment = Assignment(comparison_id=comp.id, user_id=user_id, shown_left_id=left, created_at=now)
    session.add(assignment)
    try:
        session.flush()
    except IntegrityError:  # the same user asked twice at once: serve what the other request reserved
        session.rollback()
        return next_comparison(
            session, user_id, overlap=overlap, gold_rate=gold_rate, reservation=reservation, rng=rng, now=now
        )
    served = _served(session, assignment)
    session.commit()
    return served


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
