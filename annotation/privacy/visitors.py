"""A visitor's own results: put them in the annotation pool (which keeps them) or delete everything of theirs."""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from annotation.store.candidates import DeletionResult, add_to_pool, delete_visitor_data
from db.models import Candidate, Generation, GenerationSubject, ReferencePhoto
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
    their pictures and downloads that the web server served."""
    from annotation.privacy.retention import forget_visitor_files

    if not visitor_id:
        raise InputError("there is no data of yours on this server")
    return delete_visitor_data(session, visitor_id, data_dir,
                               lambda files: forget_visitor_files(data_dir, visitor_id, files))


def new_visitor_id() -> str:
    """A random, unguessable id for one visitor session (kept server-side only)."""
    return secrets.token_hex(16)
