"""Session-bound facades over the annotation services, one per tab: each method opens a session, calls one
service function and returns plain results. The tab handlers call these (tests pass fakes instead)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class AnnotatorProgress:
    """An annotator's vote count and the pairs left for them."""

    votes: int
    remaining: int  # comparisons in the pool this annotator has not judged yet


class AnnotationService:
    """The Annotate tab's use-cases on the store: serve a pair, vote, skip, undo, flag, progress."""

    def __init__(self, sessions, data_dir: str | os.PathLike[str], *, overlap: int = 3, gold_rate: float = 0.1):
        self.sessions = sessions
        self.data_dir = Path(data_dir)
        self.overlap = overlap
        self.gold_rate = gold_rate

    def image_path(self, rel: str | None) -> str | None:
        return None if rel is None else str(self.data_dir / rel)

    def next_pair(self, user_id: int):
        from annotation.store.sampling import next_comparison

        with self.sessions() as session:
            return next_comparison(session, user_id, overlap=self.overlap, gold_rate=self.gold_rate)

    def vote(self, user_id: int, comparison_id: int, *, overall: str, answers: Mapping[str, Any],
             duration_ms: int | None, key: str):
        """Record a vote: ``overall`` and ``answers`` (question name → value, per person ``{slot: value}``) in
        terms of candidates A and B."""
        from annotation.store.votes import VoteRequest, record_vote

        request = VoteRequest(comparison_id=comparison_id, user_id=user_id, overall=overall, idempotency_key=key,
                              answers=dict(answers), duration_ms=duration_ms)
        with self.sessions() as session:
            return record_vote(session, request)

    def skip(self, user_id: int, comparison_id: int) -> None:
        from annotation.store.sampling import skip_comparison

        with self.sessions() as session:
            skip_comparison(session, user_id, comparison_id)

    def undo(self, user_id: int):
        from annotation.store.votes import undo_last_vote

        with self.sessions() as session:
            return undo_last_vote(session, user_id)

    def flag(self, user_id: int, candidate_id: int, failure_types, note: str = ""):
        from annotation.store.votes import flag_badcase

        with self.sessions() as session:
            return flag_badcase(session, candidate_id, list(failure_types), note, user_id=user_id)

    def progress(self, user_id: int) -> AnnotatorProgress:
        from sqlalchemy import exists, func, select

        from db.engine import read_only
        from db.models import Assignment, Comparison, Vote

        with self.sessions() as session:
            read_only(session)
            votes = session.scalar(select(func.count()).select_from(Vote).where(Vote.user_id == user_id)) or 0
            seen = exists().where(Assignment.comparison_id == Comparison.id, Assignment.user_id == user_id)
            remaining = session.scalar(
                select(func.count()).select_from(Comparison).where(
                    Comparison.active.is_(True), Comparison.is_gold.is_(False),
                    Comparison.vote_count < self.overlap, ~seen)
            ) or 0
            session.commit()
        return AnnotatorProgress(int(votes), int(remaining))
