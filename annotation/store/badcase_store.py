"""The bad-case loop on the app side: bad cases flagged by annotators, read back from the store as the prompt
synthesizer's :class:`~idglow.prompting.badcases.Badcase` records (newest first), and written as JSON Lines in
the format ``idglow prompt --badcases FILE`` reads. ``idglow prompt`` and ``idglow eval`` read them straight from
a database with ``--badcases URL``, through :func:`badcases_from_url` (the ``idglow.badcase_stores`` entry
point)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Badcase as StoredBadcase
from db.models import Candidate, Generation, GenerationSubject
from idglow.errors import InputError
from idglow.prompting.badcases import Badcase

DEFAULT_LIMIT = 200  # the newest flags considered for one prompt; the synthesizer picks the most relevant few


def recent_badcases(session: Session, *, task: str | None = None, limit: int = DEFAULT_LIMIT) -> list[Badcase]:
    """The newest ``limit`` flagged bad cases (of ``task`` when given), newest first, each with the prompt that
    made the flagged candidate, its group size and its target ages."""
    query = (select(StoredBadcase, Generation.id, Generation.final_prompt, Generation.num_subjects)
             .join(Candidate, Candidate.id == StoredBadcase.candidate_id)
             .join(Generation, Generation.id == Candidate.generation_id)
             .order_by(StoredBadcase.created_at.desc(), StoredBadcase.id.desc()).limit(limit))
    if task is not None:
        query = query.where(StoredBadcase.task == task)
    rows = session.execute(query).all()
    ages = _target_ages(session, {row[1] for row in rows})
    return [Badcase(failure_types=tuple(flag.failure_types), task=flag.task.value, note=flag.note or "",
                    prompt=prompt, candidate_id=flag.candidate_id, num_subjects=num, target_ages=ages.get(gen_id, ()),
                    id=flag.id)
            for flag, gen_id, prompt, num in rows]


def badcases_from_url(url: str, task: str | None = None, limit: int = DEFAULT_LIMIT) -> list[Badcase]:
    """The newest ``limit`` bad cases (of ``task`` when given) in the store at the SQLAlchemy ``url``, read
    without changing it."""
    from sqlalchemy import inspect, make_url

    from db.engine import make_engine, make_session_factory

    sa_url = make_url(url)
    if sa_url.get_backend_name() == "sqlite" and sa_url.database and not Path(sa_url.database).is_file():
        raise InputError(f"--badcases {url}: no such database file")
    engine = make_engine(url)
    try:
        if not inspect(engine).has_table(StoredBadcase.__tablename__):
            raise InputError(f"--badcases {url}: no preference store there (run `idglow db upgrade --db URL`)")
        with make_session_factory(engine)() as session:
            return recent_badcases(session, task=task, limit=limit)
    finally:
        engine.dispose()


def _target_ages(session: Session, generation_ids: set[int]) -> dict[int, tuple[float | None, ...]]:
    if not generation_ids:
        return {}
    rows = session.execute(select(GenerationSubject.generation_id, GenerationSubject.slot, GenerationSubject.target_age)
                           .where(GenerationSubject.generation_id.in_(generation_ids))
                           .order_by(GenerationSubject.generation_id, GenerationSubject.slot)).all()
    out: dict[int, list[float | None]] = {}
    for gen_id, _, age in rows:
        out.setdefault(gen_id, []).append(age)
    return {k: tuple(v) for k, v in out.items()}


def write_badcases_jsonl(session: Session, path: str | os.PathLike[str], *, limit: int | None = None) -> int:
    """Write every flagged bad case (newest first; at most ``limit``) to ``path`` as JSON Lines; returns how many."""
    cases = recent_badcases(session, limit=limit if limit is not None else 2**31 - 1)
    with Path(path).open("w", encoding="utf-8") as f:
        for case in cases:
            f.write(json.dumps(case.to_dict(), sort_keys=True) + "\n")
    return len(cases)
