"""Recording votes (idempotent, one per comparison and user), undo, and badcase flags.

On a SQLite file, votes are written by one thread per engine that commits the votes of all concurrent
callers together (group commit, see ``_VoteWriter``); each caller gets its own result or error once the
transaction holding its vote is committed.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy import Connection, Engine, Integer, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from annotation.store.errors import DuplicateVote, InvalidVote, NotFound, UndoExpired
from annotation.store.users import get_user
from db.engine import is_sqlite_file
from db.models import (
    Assignment,
    AssignmentStatus,
    Badcase,
    Candidate,
    Comparison,
    Generation,
    Overall,
    User,
    Vote,
)
from db.types import UTCDateTime, utcnow
from idglow import preferences
from idglow.errors import InputError
from idglow.preferences import Question
from idglow.prompting.badcases import FAILURE_TYPES  # the taxonomy shared with prompt synthesis

logger = logging.getLogger(__name__)

DEFAULT_UNDO_WINDOW = timedelta(minutes=5)
MAX_KEY_LENGTH = 128
MAX_DURATION_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class VoteRequest:
    """A vote on a served comparison, in terms of its candidates A and B (not screen sides).

    ``overall`` answers the primary question (a|b|tie|both_bad). ``answers`` holds the other answers keyed by
    question name (``idglow.preferences.QUESTIONS``): a value, or ``{slot (0-based): value}`` for a
    per-person question — e.g. ``{"strength": "clear", "identity": {0: "a"}, "texture": "tie"}`` (strength
    slight|clear only for overall a|b; identity: whose face better keeps that person).
    """

    comparison_id: int
    user_id: int
    overall: Overall | str
    idempotency_key: str
    answers: Mapping[str, Any] | None = None
    duration_ms: int | None = None


@dataclass(frozen=True)
class VoteResult:
    """A recorded vote, or the earlier vote that an idempotency key replays."""

    vote_id: int
    comparison_id: int
    user_id: int
    overall: Overall
    created_at: datetime
    replayed: bool  # True when the idempotency key had already been recorded


def _text_of(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _choice(question: Question, value: Any, what: str) -> str:
    value = _text_of(value)
    if value not in question.values:
        raise InvalidVote(f"invalid {what} {value!r}; expected {'|'.join(question.values)}")
    return value


def _per_person(question: Question, given: Any) -> dict[str, str]:
    if not isinstance(given, Mapping):
        raise InvalidVote(f"{question.name} answers must map a person's slot to a choice, not {given!r}")
    out = {}
    for slot, choice in given.items():
        if isinstance(slot, bool) or not isinstance(slot, int) and not str(slot).isdigit():
            raise InvalidVote(f"invalid {question.name} slot {slot!r}")
        if _text_of(choice) is not None:
            out[str(int(slot))] = _choice(question, choice, f"{question.name} choice for slot {slot}")
    return out


def _check_grades(overall: Overall, answers: dict[str, Any]) -> None:
    questions, main = preferences.by_name(), preferences.primary()
    for name, value in answers.items():
        question = questions[name]
        if question.grades is None:
            continue
        graded = overall.value if question.grades == main.name else answers.get(question.grades)
        if graded not in question.grades_values:
            article = "an" if question.grades[0] in "aeiou" else "a"
            raise InvalidVote(f"{name} {value!r} only applies to {article} {question.grades} choice of "
                              f"{' or '.join(question.grades_values)}, not {graded!r}")


def validate_answers(overall: Any, given: Mapping[str, Any]) -> tuple[Overall, dict[str, Any]]:
    """The primary answer and the other answers of a vote, checked against the declared questions
    (``idglow.preferences``): known names, valid choices, required ones given, a grade only where the answer
    it grades allows one. Unanswered questions are left out. Raises InvalidVote."""
    questions = preferences.by_name()
    main = preferences.primary()
    if _text_of(overall) is None:
        raise InvalidVote(f"{main.name} choice is required")
    overall = Overall(_choice(main, overall, f"{main.name} choice"))
    unknown = sorted(set(given) - set(questions))
    if unknown:
        raise InvalidVote(f"unknown question {unknown[0]!r}; expected one of {', '.join(questions)}")
    answers: dict[str, Any] = {}
    for name, question in questions.items():
        value = given.get(name)
        if question is main:
            continue
        if value is None or (question.per_person and not value):
            if question.required:
                raise InvalidVote(f"{name} is required")
            continue
        answers[name] = _per_person(question, value) if question.per_person else _choice(question, value, name)
    _check_grades(overall, answers)
    return overall, answers


def _validate(request: VoteRequest) -> dict:
    key = request.idempotency_key
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise InvalidVote(f"invalid idempotency key {key!r}: 1-{MAX_KEY_LENGTH} characters")
    overall, answers = validate_answers(request.overall, request.answers or {})
    duration = request.duration_ms
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int) or not 0 <= duration <= MAX_DURATION_MS
    ):
        raise InvalidVote(f"invalid duration_ms {duration!r}")
    return {"overall": overall, "answers": answers, "duration_ms": duration}


@dataclass
class _PendingVote:
    """A validated vote on its way to the database, with the future its caller waits on."""

    request: VoteRequest
    fields: dict
    now: datetime
    future: Future = field(default_factory=Future)


@dataclass(frozen=True)
class _Written:
    result: VoteResult
    assignment_id: int | None  # the assignment marked voted (None for a replay)


def _replay_result(row) -> VoteResult:  # noqa: ANN001
    return VoteResult(row.id, row.comparison_id, row.user_id, row.overall, row.created_at, True)


# Statements of the write path, built once (SQLAlchemy then reuses their cache keys and compiled forms).
_REPLAYS = select(
    Vote.id, Vote.idempotency_key, Vote.comparison_id, Vote.user_id, Vote.overall, Vote.created_at
).where(Vote.idempotency_key.in_(bindparam("keys", expanding=True)))


@functools.cache
def _served_statement(pairs: int):
    """Assignment, user and comparison rows of ``pairs`` (comparison, user) pairs, bound as ``c{i}``/``u{i}``.

    An OR of exact pairs (each one a lookup in the unique (comparison, user) index), not ``IN`` lists of
    users and comparisons, whose cross product can be large when many annotators vote on the same pairs.
    """
    return (
        select(
            Assignment.id,
            Assignment.comparison_id,
            Assignment.user_id,
            Assignment.shown_left_id,
            Assignment.status,
            User.is_active,
            Comparison.is_gold,
            Generation.num_subjects,
        )
        .join(User, User.id == Assignment.user_id)
        .join(Comparison, Comparison.id == Assignment.comparison_id)
        .join(Candidate, Candidate.id == Comparison.candidate_a_id)
        .join(Generation, Generation.id == Candidate.generation_id)
        .where(
            or_(
                *(
                    and_(
                        Assignment.comparison_id == bindparam(f"c{i}"),
                        Assignment.user_id == bindparam(f"u{i}"),
                    )
                    for i in range(pairs)
                )
            )
        )
    )


_ACTIVE_USERS = select(User.id).where(User.id.in_(bindparam("ids", expanding=True)), User.is_active.is_(True))
_COMPARISONS = (
    select(Comparison.id, Comparison.is_gold, Generation.num_subjects)
    .join(Candidate, Candidate.id == Comparison.candidate_a_id)
    .join(Generation, Generation.id == Candidate.generation_id)
    .where(Comparison.id.in_(bindparam("ids", expanding=True)))
)
_INSERT_VOTES = insert(Vote)
_VOTE_IDS = select(Vote.idempotency_key, Vote.id).where(
    Vote.idempotency_key.in_(bindparam("keys", expanding=True))
)
_MARK_VOTED = (
    update(Assignment).where(Assignment.id == bindparam("b_id")).values(status=AssignmentStatus.voted)
)
_COUNT_VOTES = (
    update(Comparison)
    .where(Comparison.id == bindparam("b_id"))
    .values(
        vote_count=Comparison.vote_count + bindparam("b_n", type_=Integer()),
        last_vote_at=bindparam("b_at", type_=UTCDateTime()),
    )
)


def _replay_rows(conn: Connection, keys: set[str]) -> dict[str, Any]:
    return {r.idempotency_key: r for r in conn.execute(_REPLAYS, {"keys": sorted(keys)})}


def _key_reused(request: VoteRequest) -> InvalidVote:
    return InvalidVote(f"idempotency key {request.idempotency_key!r} was already used for another vote")


def _duplicate(request: VoteRequest) -> DuplicateVote:
    return DuplicateVote(f"user {request.user_id} already voted on comparison {request.comparison_id}")


def _served_rows(
    conn: Connection, requests: list[VoteRequest]
) -> tuple[dict[tuple[int, int], Any], set[int], dict[int, Any]]:
    """The rows the checks need: served assignments by (comparison, user), the active users among the voters
    and the comparisons by id. One query for the common case (the pair was served: assignment, user and
    comparison together); two more only for votes that will be refused, to tell which check fails first."""
    pairs = sorted({(r.comparison_id, r.user_id) for r in requests})
    params = {f"c{i}": c for i, (c, _) in enumerate(pairs)} | {f"u{i}": u for i, (_, u) in enumerate(pairs)}
    assignments = {
        (r.comparison_id, r.user_id): r for r in conn.execute(_served_statement(len(pairs)), params)
    }
    active_users = {user for (_, user), r in assignments.items() if r.is_active}
    comps = {comp: r for (comp, _), r in assignments.items()}
    unexplained = [r for r in requests if r.user_id not in active_users or r.comparison_id not in comps]
    if unexplained:
        active_users |= set(conn.scalars(_ACTIVE_USERS, {"ids": sorted({r.user_id for r in unexplained})}))
        for r in conn.execute(_COMPARISONS, {"ids": sorted({r.comparison_id for r in unexplained})}):
            comps.setdefault(r.id, r)
    return assignments, active_users, comps


def _bad_slots(request: VoteRequest, fields: dict, comp: Any) -> InvalidVote | None:
    """An error if the vote's per-person answers name a slot the comparison does not have."""
    for question in preferences.declared():
        given = fields["answers"].get(question.name) if question.per_person else None
        bad = sorted(int(s) for s in given or () if not 0 <= int(s) < comp.num_subjects)
        if bad:
            return InvalidVote(
                f"{question.name} choice for slot {bad[0]} but comparison {request.comparison_id} has "
                f"{comp.num_subjects} subject(s) (slots 0-{comp.num_subjects - 1})"
            )
    return None


@dataclass
class _BatchChecks:
    """Judges the votes of one batch in order, as if they were recorded one after the other."""

    replays: dict[str, Any]  # idempotency key -> the stored vote that used it
    assignments: dict[tuple[int, int], Any]
    active_users: set[int]
    comps: dict[int, Any]
    first_use: dict[str, int] = field(default_factory=dict)  # key -> index of the accepted vote using it
    voted: set[tuple[int, int]] = field(default_factory=set)

    def replay(self, batch: Sequence[_PendingVote], request: VoteRequest) -> _Written | Exception | int | None:
        """For a vote whose idempotency key was used before: the stored outcome, the index of the accepted
        vote of this batch it repeats, or an error if the key was used for another pair; else None."""
        key, pair = request.idempotency_key, (request.comparison_id, request.user_id)
        row = self.replays.get(key)
        if row is not None:
            same = (row.comparison_id, row.user_id) == pair
            return _Written(_replay_result(row), None) if same else _key_reused(request)
        if key in self.first_use:
            earlier = batch[self.first_use[key]].request
            same = (earlier.comparison_id, earlier.user_id) == pair
            return self.first_use[key] if same else _key_reused(request)
        return None

    def refusal(self, request: VoteRequest, fields: dict) -> Exception | None:
        """Why a new vote is refused (unknown user or comparison, bad slot, not served, already voted)."""
        pair = (request.comparison_id, request.user_id)
        if request.user_id not in self.active_users:
            return NotFound(f"unknown user id {request.user_id!r}")
        comp = self.comps.get(request.comparison_id)
        if comp is None:
            return NotFound(f"unknown comparison id {request.comparison_id!r}")
        bad_slot = _bad_slots(request, fields, comp)
        if bad_slot is not None:
            return bad_slot
        assignment = self.assignments.get(pair)
        if assignment is None:
            kind = "gold item" if comp.is_gold else "comparison"
            return InvalidVote(
                f"{kind} {request.comparison_id} was not served to user {request.user_id}; votes need next_comparison"
            )
        if assignment.status == AssignmentStatus.voted or pair in self.voted:
            return _duplicate(request)
        return None

    def judge(
        self, batch: Sequence[_PendingVote]
    ) -> tuple[list[_Written | Exception | None], list[int], dict[int, int]]:
        """The refused and replayed outcomes by index (None for the votes to insert), the indexes of the votes
        to insert, and the in-batch replays (index -> index of the accepted vote it repeats)."""
        outcomes: list[_Written | Exception | None] = [None] * len(batch)
        accepted: list[int] = []
        replay_of: dict[int, int] = {}
        for i, pending in enumerate(batch):
            request = pending.request
            replayed = self.replay(batch, request)
            if isinstance(replayed, int):
                replay_of[i] = replayed
                continue
            outcomes[i] = replayed if replayed is not None else self.refusal(request, pending.fields)
            if outcomes[i] is None:
                self.voted.add((request.comparison_id, request.user_id))
                self.first_use[request.idempotency_key] = i
                accepted.append(i)
        return outcomes, accepted, replay_of


def _insert_accepted(
    conn: Connection,
    batch: Sequence[_PendingVote],
    accepted: list[int],
    assignments: dict[tuple[int, int], Any],
) -> dict[int, _Written]:
    """Insert the accepted votes, mark their assignments voted and count them on their comparisons; returns
    each accepted index's outcome."""
    served = [assignments[(batch[i].request.comparison_id, batch[i].request.user_id)] for i in accepted]
    rows = [
        {
            "comparison_id": batch[i].request.comparison_id,
            "user_id": batch[i].request.user_id,
            "shown_left_id": assignment.shown_left_id,
            "idempotency_key": batch[i].request.idempotency_key,
            "created_at": batch[i].now,
            **batch[i].fields,
        }
        for i, assignment in zip(accepted, served)
    ]
    conn.execute(_INSERT_VOTES, rows)  # one executemany; ids are read back by their unique keys
    ids = dict(conn.execute(_VOTE_IDS, {"keys": [row["idempotency_key"] for row in rows]}).all())
    vote_ids = [ids[row["idempotency_key"]] for row in rows]
    conn.execute(_MARK_VOTED, [{"b_id": assignment.id} for assignment in served])
    per_comparison: dict[int, tuple[int, datetime]] = {}
    for i in accepted:
        cid = batch[i].request.comparison_id
        n = per_comparison[cid][0] if cid in per_comparison else 0
        # the last vote in batch order sets last_vote_at, as sequential writes would
        per_comparison[cid] = (n + 1, batch[i].now)
    conn.execute(_COUNT_VOTES, [{"b_id": cid, "b_n": n, "b_at": at} for cid, (n, at) in per_comparison.items()])
    written = {}
    for i, assignment, vote_id in zip(accepted, served, vote_ids):
        request = batch[i].request
        result = VoteResult(
            vote_id, request.comparison_id, request.user_id, batch[i].fields["overall"], batch[i].now, False
        )
        written[i] = _Written(result, assignment.id)
    return written


def _apply_votes(conn: Connection, batch: Sequence[_PendingVote]) -> list[_Written | Exception]:
    """Check and write ``batch`` in ``conn``'s current transaction; one outcome per vote, in order.

    The rows the checks need are fetched up front (two queries; two more when some votes will be refused),
    then the votes are judged one after the other as if recorded sequentially (a key repeated inside the batch
    is a replay of its first use, a second vote on the same pair is a duplicate). A rejected vote writes
    nothing and does not affect the others. The caller commits; on SQLite the transaction holds the write
    lock from its first statement (``BEGIN IMMEDIATE``), so nothing changes between the checks and the writes.
    """
    requests = [p.request for p in batch]
    replays = _replay_rows(conn, {r.idempotency_key for r in requests})
    assignments, active_users, comps = _served_rows(conn, requests)
    checks = _BatchChecks(replays, assignments, active_users, comps)
    outcomes, accepted, replay_of = checks.judge(batch)
    if accepted:
        for i, written in _insert_accepted(conn, batch, accepted, assignments).items():
            outcomes[i] = written
    for i, j in replay_of.items():
        first = outcomes[j].result
        outcomes[i] = _Written(dataclasses.replace(first, replayed=True), None)
    return outcomes


def _resolve_conflict(conn: Connection, request: VoteRequest) -> VoteResult:
    """After a unique-constraint failure (a concurrent request won the race): its replay, or DuplicateVote."""
    row = _replay_rows(conn, {request.idempotency_key}).get(request.idempotency_key)
    if row is not None:
        if (row.comparison_id, row.user_id) != (request.comparison_id, request.user_id):
            raise _key_reused(request)
        return _replay_result(row)
    raise _duplicate(request)


class _VoteWriter:
    """Group commit: one thread per engine writes the queued votes of all threads in one transaction.

    SQLite has a single writer; when every request thread takes the write lock itself, they queue in the
    busy handler (sleep and retry), so latency under load is set by sleeps rather than work. Here the
    requests queue in order, and each transaction carries every vote that arrived while the previous one
    was being written (one fsync for all of them). A vote's future is resolved only after its commit. The
    thread stops after ``_IDLE_S`` without work and is started again by the next vote.
    """

    def __init__(self, engine: Engine):
        self._engine = weakref.ref(engine)  # the registry is keyed weakly by the engine: do not keep it alive
        self._queue: list[_PendingVote] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._expected = (
            1  # size of the last batch: that many callers are likely to send their next vote soon
        )

    def submit(self, pending: _PendingVote) -> Future:
        with self._cond:
            self._queue.append(pending)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="idglow-vote-writer", daemon=True)
                self._thread.start()
            if len(self._queue) == 1 or len(self._queue) >= self._expected:  # what the writer waits for
                self._cond.notify()
        return pending.future

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._cond.wait(timeout=_IDLE_S)
                if not self._queue:
                    self._thread = None
                    return
                if len(self._queue) < self._expected:
                    # the callers of the last batch were just answered and are sending their next votes:
                    # wait a moment for them rather than pay a commit (an fsync) for a fraction of them
                    deadline = time.monotonic() + _GATHER_S
                    while len(self._queue) < self._expected and (left := deadline - time.monotonic()) > 0:
                        self._cond.wait(timeout=left)
                batch = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
                self._expected = len(batch)
            try:
                self._write(batch)
            finally:
                for pending in batch:  # never leave a caller waiting
                    if not pending.future.done():
                        pending.future.set_exception(RuntimeError("vote writer stopped unexpectedly"))

    def _write(self, batch: list[_PendingVote]) -> None:
        engine = self._engine()
        if engine is None:
            for pending in batch:
                pending.future.set_exception(RuntimeError("the engine of this vote was garbage-collected"))
            return
        try:
            with engine.connect() as conn:
                outcomes = _apply_votes(conn, batch)
                conn.commit()
        except Exception as err:  # noqa: BLE001 - decided per vote below
            if len(batch) > 1:
                logger.warning(
                    "group commit of %d votes failed (%s); writing them one by one", len(batch), err
                )
                for pending in batch:
                    self._write([pending])
                return
            pending = batch[0]
            if isinstance(err, IntegrityError):
                try:
                    with engine.connect() as conn:
                        pending.future.set_result(_Written(_resolve_conflict(conn, pending.request), None))
                        conn.rollback()
                except Exception as again:  # noqa: BLE001 - handed to the caller
                    pending.future.set_exception(again)
            else:
                pending.future.set_exception(err)
            return
        logger.debug("committed a batch of %d vote(s)", len(batch))
        for pending, outcome in zip(batch, outcomes):
            if isinstance(outcome, Exception):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)


_IDLE_S = 2.0
_GATHER_S = 0.002
MAX_BATCH = 256
_writers: weakref.WeakKeyDictionary[Engine, _VoteWriter] = weakref.WeakKeyDictionary()
_writers_lock = threading.Lock()


def _writer_for(engine: Engine) -> _VoteWriter:
    with _writers_lock:
        writer = _writers.get(engine)
        if writer is None:
            writer = _writers[engine] = _VoteWriter(engine)
        return writer


def _reset_after_fork() -> None:
    # a forked child has none of the parent's threads (and maybe a lock that one of them held)
    global _writers_lock
    _writers_lock = threading.Lock()
    _writers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _expire(session: Session, written: _Written) -> None:
    """Objects of ``session`` that the write changed are reloaded on their next use."""
    keys = [identity_key(Comparison, written.result.comparison_id)]
    if written.assignment_id is not None:
        keys.append(identity_key(Assignment, written.assignment_id))
    for key in keys:
        obj = session.identity_map.get(key)
        if obj is not None:
            session.expire(obj)


def record_vote(
    session: Session,
    request: VoteRequest,
    *,
    now: datetime | None = None,
    group_commit: bool | None = None,
) -> VoteResult:
    """Record a vote on a comparison served to the user (see ``next_comparison``).

    Submitting the same idempotency key again returns the first result (``replayed=True``) and writes
    nothing. Raises NotFound (user, comparison), InvalidVote (bad choice, slot the generation does not have,
    comparison not served to the user) or DuplicateVote (already voted with another key); nothing is written
    then. The vote is committed when this returns.

    ``group_commit`` (default: on when ``session`` is bound to an engine on a SQLite file) hands the vote
    to the engine's writer thread, which commits the votes of concurrent callers together; ``session``'s
    transaction is committed first. Off (and for a session bound to a connection), the vote is written and
    committed in ``session``.
    """
    fields = _validate(request)
    pending = _PendingVote(request, fields, now or utcnow())
    bind = session.get_bind()
    if not isinstance(bind, Engine):
        group_commit = False
    elif group_commit is None:
        group_commit = is_sqlite_file(bind)
    if group_commit:
        session.commit()  # also releases a SQLite write lock this session may hold
        written = _writer_for(bind).submit(pending).result()
    else:
        written = _record_in_session(session, pending)
    _expire(session, written)
    return written.result


def _record_in_session(session: Session, pending: _PendingVote) -> _Written:
    try:
        outcome = _apply_votes(session.connection(), [pending])[0]
        if isinstance(outcome, Exception):
            raise outcome
        session.commit()
        return outcome
    except IntegrityError:
        # A concurrent request with the same key or for the same (comparison, user) won the race.
        session.rollback()
        try:
            return _Written(_resolve_conflict(session.connection(), pending.request), None)
        finally:
            session.rollback()
    except BaseException:
        session.rollback()
        raise


@dataclass(frozen=True)
class UndoResult:
    """The deleted vote: its ids and the answers it held, in terms of candidates A and B, so a form can show
    them again. ``answers`` maps question name → value (per person: ``{slot: value}`` with int slots); every
    declared question also reads as an attribute (``undone.texture``; None, or ``{}`` per person, when
    unanswered)."""

    vote_id: int
    comparison_id: int
    answers: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        question = preferences.by_name().get(name)
        if question is None:
            raise AttributeError(name)
        return self.answers.get(name, {} if question.per_person else None)


def vote_answers(overall: Any, answers: Mapping[str, Any] | None) -> dict[str, Any]:
    """A stored vote's answers by question name: the primary answer (its column) with the ``answers`` JSON;
    per-person answers keep their stored string slots."""
    return {preferences.primary().name: _text_of(overall), **(answers or {})}


def _undone(vote: Vote) -> UndoResult:
    answers = vote_answers(vote.overall, vote.answers)
    for question in preferences.declared():
        if question.per_person and question.name in answers:
            answers[question.name] = {int(k): v for k, v in answers[question.name].items()}
    return UndoResult(vote_id=vote.id, comparison_id=vote.comparison_id, answers=answers)


def undo_last_vote(
    session: Session, user_id: int, *, within: timedelta = DEFAULT_UNDO_WINDOW, now: datetime | None = None
) -> UndoResult:
    """Delete the user's most recent vote if it is younger than ``within``; its comparison is served to
    them again next, and the returned UndoResult holds the answers it had. Raises UndoExpired when there is
    no such vote."""
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
        comparison_id, undone = vote.comparison_id, _undone(vote)
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
        return undone
    except BaseException:
        session.rollback()
        raise


def stored_votes(session: Session, comparison_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Every stored vote (or those on ``comparison_ids``) as ``{"id", "comparison_id", "user_id", "shown_left_id",
    "created_at", question name: answer}``, in vote order; a per-person answer is ``{slot: value}`` (slots as strings); an
    unanswered question has no key."""
    query = select(Vote).order_by(Vote.comparison_id, Vote.id)
    if comparison_ids is not None:
        query = query.where(Vote.comparison_id.in_(list(comparison_ids)))
    return [{"id": vote.id, "comparison_id": vote.comparison_id, "user_id": vote.user_id,
             "shown_left_id": vote.shown_left_id, "created_at": vote.created_at,
             **vote_answers(vote.overall, vote.answers)}
            for vote in session.scalars(query)]


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
