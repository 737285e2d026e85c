"""A visitor's own results: put them in the annotation pool (which keeps them) or delete everything of theirs.

The pool rule: "Delete my data" deletes a visitor's results in the annotation pool too, unless an annotator has
already voted on them. Those stay (the visitor agreed to the pool when adding them, and the votes are the
annotators' work): their generations and reference photos are unlinked from the visitor, so nothing left is theirs
by name, and the answer says how many stayed. No vote is ever deleted by a visitor.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from annotation.store.candidates import DeletionResult, add_to_pool, delete_visitor_data
from db.models import Candidate, Comparison, Generation, GenerationSubject, ReferencePhoto, Vote
from idglow.errors import InputError


def pool_visitor_results(session: Session, visitor_id: str, generation_ids: Sequence[int]) -> int:
    """Put this visitor's candidates of ``generation_ids`` in the annotation pool and keep them (their
    expiry is lifted). Returns the number of pooled candidates."""
    if not visitor_id or not generation_ids:
        raise InputError("generate some images first")
    owned = list(session.scalars(select(Generation.id).where(
        Generation.id.in_(list(generation_ids)), Generation.visitor_id == visitor_id)))
    if len(owned) != len(set(generation_ids)):
        raise InputError("these results are not yours or have expired")
    ids = list(session.scalars(select(Candidate.id).where(Candidate.generation_id.in_(owned))))
    if not ids:
        raise InputError("no stored image to add (all were withheld)")
    photo_ids = select(GenerationSubject.reference_photo_id).where(GenerationSubject.generation_id.in_(owned))
    session.execute(update(Generation).where(Generation.id.in_(owned)).values(expires_at=None))
    session.execute(update(ReferencePhoto).where(ReferencePhoto.id.in_(photo_ids),
                                                ReferencePhoto.visitor_id == visitor_id)
                    .values(expires_at=None, consent=True))
    session.commit()
    add_to_pool(session, ids)
    return len(ids)


def delete_visitor(session: Session, visitor_id: str, data_dir: str | os.PathLike[str]) -> DeletionResult:
    """Delete the visitor's generations, uploads and stored files, their download folder, and every copy of
    their pictures and downloads that the web server served. Pooled results that annotators voted on stay
    (unlinked from the visitor, see the module's pool rule); ``kept_in_pool`` counts their generations."""
    import dataclasses

    from annotation.privacy.retention import forget_visitor_files

    if not visitor_id:
        raise InputError("there is no data of yours on this server")
    kept = keep_voted_pool_results(session, visitor_id)
    result = delete_visitor_data(session, visitor_id, data_dir, lambda files: forget_visitor_files(
        data_dir, visitor_id, not_shared(session, visitor_id, files), keep=other_downloads(data_dir, visitor_id)))
    return dataclasses.replace(result, kept_in_pool=kept)


def keep_voted_pool_results(session: Session, visitor_id: str) -> int:
    """Unlink from the visitor their generations with a candidate in a comparison that has a vote, and the
    reference photos those use, so that deleting the visitor's data leaves them and their votes. Returns how
    many generations were kept."""
    voted = select(Comparison.candidate_a_id).join(Vote, Vote.comparison_id == Comparison.id).union(
        select(Comparison.candidate_b_id).join(Vote, Vote.comparison_id == Comparison.id))
    generations = list(session.scalars(select(Generation.id).distinct()
                                       .join(Candidate, Candidate.generation_id == Generation.id)
                                       .where(Generation.visitor_id == visitor_id, Candidate.id.in_(voted))))
    if not generations:
        return 0
    photos = select(GenerationSubject.reference_photo_id).where(GenerationSubject.generation_id.in_(generations))
    session.execute(update(ReferencePhoto).where(ReferencePhoto.id.in_(photos),
                                                ReferencePhoto.visitor_id == visitor_id)
                    .values(visitor_id=None, expires_at=None))
    session.execute(update(Generation).where(Generation.id.in_(generations)).values(visitor_id=None, expires_at=None))
    session.commit()
    return len(generations)


def not_shared(session: Session, visitor_id: str, files: Sequence[Any]) -> list[Any]:
    """The image files whose content no other visitor's (or pooled) candidate has: identical pictures share one
    served copy, which must stay while someone else is shown it."""
    from annotation.store.storage import file_sha256

    digests = {}
    for path in files:
        try:
            digests[path] = file_sha256(path)
        except OSError:
            continue
    if not digests:
        return list(files)
    others = set(session.scalars(
        select(Candidate.image_sha256).join(Generation, Candidate.generation_id == Generation.id)
        .where(Candidate.image_sha256.in_(set(digests.values())),
               (Generation.visitor_id != visitor_id) | Generation.visitor_id.is_(None))))
    return [path for path in files if digests.get(path) not in others]


def other_downloads(data_dir: str | os.PathLike[str], visitor_id: str) -> set[tuple[str, str]]:
    """(name, sha256) of every other visitor's download file: a served copy that one of them shares stays."""
    from annotation.store.storage import file_sha256, visitor_downloads

    mine = visitor_downloads(data_dir, visitor_id)
    names = {p.name for p in mine.rglob("*") if p.is_file()} if mine.is_dir() else set()
    kept = set()
    for path in mine.parent.rglob("*") if names and mine.parent.is_dir() else ():
        if path.name in names and path.is_file() and not path.is_relative_to(mine):
            kept.add((path.name, file_sha256(path)))
    return kept


def new_visitor_id() -> str:
    """A random, unguessable id for one visitor session (kept server-side only)."""
    return secrets.token_hex(16)
