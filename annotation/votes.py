"""Recording votes (idempotent, one per comparison and user), undo, and badcase flags."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotation.errors import DuplicateVote, InvalidVote, NotFound, UndoExpired
from annotation.users import get_user
from db.models import (
    Assignment,
    AssignmentStatus,
    Badcase,
    Candidate,
    Comparison,
    Generation,
    Overall,
    Pairwise,
    Strength,
    Vote,
)
from db.types import utcnow
from idglow.errors import InputError
from idglow.prompting.badcases import FAILURE_TYPES  # the taxonomy shared with prompt synthesis

logger = logging.getLogger(__name__)

DEFAULT_UNDO_WINDOW = timedelta(minutes=5)
MAX_KEY_LENGTH = 128
MAX_DURATION_MS = 24 * 3600 * 1000



@dataclass(frozen=True)
class VoteRequest:
    """A vote on a served comparison, in terms of its candidates A and B (not screen sides).

    identity maps slot (0-based) → a|b|tie: whose face better keeps that person. texture: a|b|tie.
    artifacts: a|b|tie, the candidate with fewer artifacts. strength (slight|clear) only for overall a|b.
    """

    comparison_id: int
    user_id: int
    overall: Overall | str
    idempotency_key: str
    strength: Strength | str | None = None
    identity: Mapping[int, Pairwise | str] | None = None
    texture: Pairwise | str | None = None
    artifacts: Pairwise | str | None = None
    duration_ms: int | None = None


@dataclass(frozen=True)
class VoteResult:
    vote_id: int
    comparison_id: int
    user_id: int
    overall: Overall
    created_at: datetime
    replayed: bool  # True when the idempotency key had already been recorded


def _parse(enum_cls: type[Enum], value, field: str, optional: bool = True):  # noqa: ANN001
    if value is None:
        if optional:
            return None
        raise InvalidVote(f"{field} is required")
    try:
        return enum_cls(value.value if isinstance(value, Enum) else value)
    except ValueError:
        choices = "|".join(m.value for m in enum_cls)
        raise InvalidVote(f"invalid {field} {value!r}; expected {choices}") from None


def _validate(request: VoteRequest) -> dict:
    key = request.idempotency_key
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise InvalidVote(f"invalid idempotency key {key!r}: 1-{MAX_KEY_LENGTH} characters")
    overall = _parse(Overall, request.overall, "overall choice", optional=False)
    strength = _parse(Strength, request.strength, "strength")
    if strength is not None and overall not in (Overall.a, Overall.b):
        raise InvalidVote(
            f"strength {strength.value!r} only applies to an overall choice of a or b, not {overall.value!r}"
        )
    identity = None
    if request.identity:
        identity = {}
        for slot, choice in request.identity.items():
            if isinstance(slot, bool) or not isinstance(slot, int) and not str(slot).isdigit():
                raise InvalidVote(f"invalid identity slot {slot!r}")
            identity[str(int(slot))] = _parse(Pairwise, choice, f"identity choice for slot {slot}").value
    texture = _parse(Pairwise, request.texture, "texture choice")
    artifacts = _parse(Pairwise, request.artifacts, "artifacts choice")
    duration = request.duration_ms
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int) or not 0 <= duration <= MAX_DURATION_MS
    ):
        raise InvalidVote(f"invalid duration_ms {duration!r}")
    return {
        "overall": overall,
        "strength": strength,
        "identity": identity,
        "texture": texture,
        "artifacts": artifacts,
        "duration_ms": duration,
    }


def _result(vote: Vote, replayed: bool) -> VoteResult:
    return VoteResult(vote.id, vote.comparison_id, vote.user_id, vote.overall, vote.created_at, replayed)


def _replay(session: Session, request: VoteRequest) -> VoteResult | None:
    vote = session.scalar(select(Vote).where(Vote.idempotency_key == request.idempotency_key))
    if vote is None:
        return None
    if vote.comparison_id != request.comparison_id or vote.user_id != request.user_id:
        raise InvalidVote(f"idempotency key {request.idempotency_key!r} was already used for another vote")
    return _result(vote, replayed=True)


def record_vote(session: Session, request: VoteRequest, *, now: datetime | None = None) -> VoteResult:
    """Record a vote on a comparison served to the user (see ``next_comparison``).

    Submitting the same idempotency key again returns the first result (``replayed=True``) and writes
    nothing. Raises NotFound (user, comparison), InvalidVote (bad choice, slot the generation does not have,
    comparison not served to the user) or DuplicateVote (already voted with another key); nothing is written
    then.
    """
    fields = _validate(request)
    try:
        replay = _replay(session, request)
        if replay is not None:
            session.commit()
            return replay
        get_user(session, request.user_id)
        comp = session.get(Comparison, request.comparison_id)
        if comp is None:
            raise NotFound(f"unknown comparison id {request.comparison_id!r}")
        num_subjects = session.scalar(
            select(Generation.num_subjects)
            .join(Candidate, Candidate.generation_id == Generation.id)
            .where(Candidate.id == comp.candidate_a_id)
        )
        if fields["identity"]:
            bad = sorted(int(s) for s in fields["identity"] if not 0 <= int(s) < num_subjects)
            if bad:
                raise InvalidVote(
                    f"identity choice for slot {bad[0]} but comparison {comp.id} has {num_subjects} subject(s) "
                    f"(slots 0-{num_subjects - 1})"
                )
        assignment = session.scalar(
            select(Assignment).where(
                Assignment.comparison_id == comp.id, Assignment.user_id == request.user_id
            )
        )
        if assignment is None:
            kind = "gold item" if comp.is_gold else "comparison"
            raise InvalidVote(
                f"{kind} {comp.id} was not served to user {request.user_id}; votes need next_comparison"
            )
        if assignment.status == AssignmentStatus.voted:
            raise DuplicateVote(f"user {request.user_id} already voted on comparison {comp.id}")
        now = now or utcnow()
        vote = Vote(
            comparison_id=comp.id,
            user_id=request.user_id,
            shown_left_id=assignment.shown_left_id,
            idempotency_key=request.idempotency_key,
            created_at=now,
            **fields,
        )
        session.add(vote)
        assignment.status = AssignmentStatus.voted
        session.flush()
        session.execute(
            update(Comparison)
            .where(Comparison.id == comp.id)
            .values(vote_count=Comparison.vote_count + 1, last_vote_at=now)
        )
        session.commit()
        return _result(vote, replayed=False)
    except IntegrityError:
        # A concurrent request with the same key or for the same (comparison, user) won the race.
        session.rollback()
        replay = _replay(session, request)
        session.rollback()
        if replay is not None:
            return replay
        raise DuplicateVote(
            f"user {request.user_id} already voted on comparison {request.comparison_id}"
        ) from None
    except BaseException:
        session.rollback()
        raise


@dataclass(frozen=True)
class UndoResult:
    vote_id: int
    comparison_id: int


def undo_last_vote(
    session: Session, user_id: int, *, within: timedelta = DEFAULT_UNDO_WINDOW, now: datetime | None = None
) -> UndoResult:
    """Delete the user's most recent vote if it is younger than ``within``; its comparison is served to
    them again next. Raises UndoExpired when there is no such vote."""
    try:
        now = now or utcnow()
        get_user(session, user_id)
        vote = session.scalar(
            select(Vote)
            .where(Vote.user_id == user_id)
            .order_by(Vote.created_at.desc(), Vote.id.desc())
            .limit(1)
        )
        if vote is None or vote.created_at < now - within:
            raise UndoExpired(
                f"user {user_id} has no vote from the last {int(within.total_seconds())} s to undo"
            )
        comparison_id, vote_id = vote.comparison_id, vote.id
        session.delete(vote)
        session.flush()
        last = session.scalar(select(func.max(Vote.created_at)).where(Vote.comparison_id == comparison_id))
        session.execute(
            update(Comparison)
            .where(Comparison.id == comparison_id)
            .values(vote_count=Comparison.vote_count - 1, last_vote_at=last)
        )
        session.execute(
            update(Assignment)
            .where(Assignment.comparison_id == comparison_id, Assignment.user_id == user_id)
            .values(status=AssignmentStatus.open, created_at=now)
        )
        session.commit()
        return UndoResult(vote_id, comparison_id)
    except BaseException:
        session.rollback()
        raise


def flag_badcase(
    session: Session,
    candidate_id: int,
    failure_types: Sequence[str],
    note: str = "",
    *,
    user_id: int | None = None,
) -> Badcase:
    """Record a failure of a candidate with the DESIGN §5 taxonomy (``FAILURE_TYPES``)."""
    types = list(dict.fromkeys(failure_types or []))
    if not types:
        raise InputError(f"a badcase needs at least one failure type from {', '.join(FAILURE_TYPES)}")
    unknown = [t for t in types if t not in FAILURE_TYPES]
    if unknown:
        raise InputError(f"unknown failure type {unknown[0]!r}; expected one of {', '.join(FAILURE_TYPES)}")
    if len(note or "") > 2000:
        raise InputError("badcase note is longer than 2000 characters")
    try:
        cand = session.get(Candidate, candidate_id)
        if cand is None:
            raise NotFound(f"unknown candidate id {candidate_id!r}")
        if user_id is not None:
            get_user(session, user_id)
        task = session.scalar(select(Generation.task).where(Generation.id == cand.generation_id))
        badcase = Badcase(
            candidate_id=cand.id, user_id=user_id, task=task, failure_types=types, note=note or ""
        )
        session.add(badcase)
        session.commit()
        return badcase
    except BaseException:
        session.rollback()
        raise
