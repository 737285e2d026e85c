"""Model versions, generations and their candidates, the annotation pool, comparisons and gold items,
and the deletion of a visitor's data (on request or when it expires)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from annotation.store.errors import AlreadyExists, NotFound
from annotation.store.storage import image_file, remove_files, store_image
from annotation.store.users import get_user, require_role
from db.models import (
    Candidate,
    Comparison,
    ComparisonKind,
    Generation,
    GenerationSubject,
    ModelVersion,
    Overall,
    ReferencePhoto,
    Role,
    Task,
)
from idglow.errors import InputError, ModelFolderError
from idglow.subjects import MAX_SUBJECTS, SubjectRef

logger = logging.getLogger(__name__)



# ----------------------------------------------------------------------------------------- model versions
def register_model_version(
    session: Session,
    name: str,
    adapter_dir: str | os.PathLike[str] | None = None,
    *,
    base_model: str | None = None,
    notes: str | None = None,
) -> ModelVersion:
    """Record a model version. ``adapter_dir`` must hold an adapter saved with ``save_pretrained``
    (config.json + *.safetensors); None is allowed for a model without adapter weights (e.g. the demo)."""
    name = (name or "").strip()
    if not name or len(name) > 128:
        raise InputError(f"invalid model version name {name!r}: 1-128 characters")
    if adapter_dir is not None:
        folder = Path(adapter_dir)
        missing = []
        if not (folder / "config.json").is_file():
            missing.append("config.json")
        if not folder.is_dir() or not any(folder.glob("*.safetensors")):
            missing.append("*.safetensors")
        if missing:
            raise ModelFolderError(str(folder), missing, what="adapter")
        adapter_dir = str(folder.resolve())
    if session.scalar(select(ModelVersion.id).where(ModelVersion.name == name)) is not None:
        raise AlreadyExists(f"model version {name!r} already exists")
    mv = ModelVersion(name=name, adapter_dir=adapter_dir, base_model=base_model, notes=notes)
    session.add(mv)
    session.commit()
    return mv


def get_model_version(session: Session, model: int | str) -> ModelVersion:
    """The model version with this id or name; NotFound if there is none."""
    if isinstance(model, int):
        mv = session.get(ModelVersion, model)
    else:
        mv = session.scalar(select(ModelVersion).where(ModelVersion.name == model))
    if mv is None:
        raise NotFound(f"unknown model version {model!r}")
    return mv


# ------------------------------------------------------------------------------------------- generations
# One person of a generation is the request's own record (reference photo as a PIL image, array, bytes or path,
# label, target age, describe-as): stored as one GenerationSubject row whose columns are named as its fields.
SubjectRecord = SubjectRef


@dataclass
class GenerationRecord:
    """A generation to store: its task, prompts, model version, people and the request's parameters."""

    task: Task | str
    final_prompt: str
    model_version: int | str
    subjects: Sequence[SubjectRef]
    user_prompt: str = ""
    prompt_source: str = "user"
    params: dict[str, Any] = field(default_factory=dict)
    visitor_id: str | None = None
    consent: bool = False
    expires_at: datetime | None = None


@dataclass
class CandidateRecord:
    """One generated image with what was measured on it. ``face_matches`` is a ``FaceMatch`` or its dict;
    ``faces`` a list of ``Face`` or dicts."""

    image: Any
    seed: int
    faces: Sequence[Any] | None = None
    face_matches: Any = None
    metrics: dict[str, Any] | None = None


PERSON_PARAMS = ("target_ages", "labels")  # the pipeline's copies of person fields: stored on the person instead


def subjects_key(task: Task | str, subjects: Iterable[tuple[str, float | None]]) -> str:
    """Identifies "the same people for the same task": sha256 of the task, reference hashes and target ages
    in slot order. Cross-model comparisons pair generations with the same key."""
    payload = json.dumps([Task(task).value, [[sha, age] for sha, age in subjects]], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _task(task: Task | str) -> Task:
    try:
        return Task(task)
    except ValueError:
        raise InputError(f"unknown task {task!r}; expected {'|'.join(t.value for t in Task)}") from None


def register_generation(
    session: Session, record: GenerationRecord, data_dir: str | os.PathLike[str]
) -> Generation:
    """Store the reference photos (by content hash) and the generation with its subjects, in slot order: each
    person once, as a GenerationSubject row holding :meth:`SubjectRef.stored` (never copied into ``params``)."""
    task = _task(record.task)
    if not 1 <= len(record.subjects) <= MAX_SUBJECTS:
        raise InputError(f"a generation needs 1-{MAX_SUBJECTS} subjects, got {len(record.subjects)}")
    mv = get_model_version(session, record.model_version)
    refs: list[tuple[ReferencePhoto, SubjectRef]] = []
    for subject in record.subjects:
        stored = store_image(data_dir, subject.image)
        photo = ReferencePhoto(
            sha256=stored.sha256,
            path=stored.path,
            consent=bool(record.consent),
            visitor_id=record.visitor_id,
            expires_at=record.expires_at,
        )
        refs.append((photo, subject))
    key = subjects_key(task, [(p.sha256, s.target_age) for p, s in refs])
    gen = Generation(
        task=task,
        user_prompt=record.user_prompt or "",
        final_prompt=record.final_prompt,
        prompt_source=record.prompt_source,
        params={k: v for k, v in record.params.items() if k not in PERSON_PARAMS},
        model_version_id=mv.id,
        visitor_id=record.visitor_id,
        subjects_key=key,
        num_subjects=len(refs),
        expires_at=record.expires_at,
    )
    session.add(gen)
    for slot, (photo, subject) in enumerate(refs):
        session.add(photo)
        session.add(
            GenerationSubject(generation=gen, slot=slot, reference_photo=photo, **subject.stored())
        )
    session.commit()
    return gen


def _as_json(value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    return value


def add_candidates(
    session: Session,
    generation_id: int,
    candidates: Sequence[CandidateRecord],
    data_dir: str | os.PathLike[str],
    *,
    in_pool: bool = False,
) -> list[Candidate]:
    """Store the images (deduplicated by sha256) and their candidate rows; an image already registered for
    this generation returns the existing row. With ``in_pool`` the candidates join the annotation pool."""
    gen = session.get(Generation, generation_id)
    if gen is None:
        raise NotFound(f"unknown generation id {generation_id!r}")
    out: list[Candidate] = []
    for record in candidates:
        stored = store_image(data_dir, record.image)
        existing = session.scalar(
            select(Candidate).where(
                Candidate.generation_id == gen.id, Candidate.image_sha256 == stored.sha256
            )
        )
        if existing is not None:
            out.append(existing)
            continue
        matches = _as_json(record.face_matches)
        if matches is not None and len(matches.get("similarity", [])) not in (0, gen.num_subjects):
            raise InputError(
                f"face matches have {len(matches['similarity'])} slots but generation {gen.id} has "
                f"{gen.num_subjects} subjects"
            )
        cand = Candidate(
            generation_id=gen.id,
            seed=int(record.seed),
            image_path=stored.path,
            image_sha256=stored.sha256,
            width=stored.width,
            height=stored.height,
            faces=_as_json(record.faces),
            face_matches=matches,
            metrics=record.metrics,
            in_pool=False,
        )
        session.add(cand)
        session.flush()
        out.append(cand)
    session.commit()
    if in_pool:
        add_to_pool(session, [c.id for c in out])
    return out


# ------------------------------------------------------------------------------------------ pool & pairs
def _ordered(x: int, y: int) -> tuple[int, int]:
    return (x, y) if x < y else (y, x)


def _ensure_comparisons(session: Session, pairs: Iterable[tuple[int, int]], kind: ComparisonKind) -> int:
    pairs = sorted({_ordered(a, b) for a, b in pairs if a != b})
    if not pairs:
        return 0
    existing: set[tuple[int, int]] = set()
    for chunk_start in range(0, len(pairs), 500):
        chunk = pairs[chunk_start : chunk_start + 500]
        ids = sorted({i for p in chunk for i in p})
        rows = session.execute(
            select(Comparison.candidate_a_id, Comparison.candidate_b_id).where(
                Comparison.candidate_a_id.in_(ids), Comparison.candidate_b_id.in_(ids)
            )
        )
        existing.update((a, b) for a, b in rows)
    new = [p for p in pairs if p not in existing]
    if new:
        session.execute(
            Comparison.__table__.insert(),
            [
                {
                    "candidate_a_id": a,
                    "candidate_b_id": b,
                    "kind": kind,
                    "is_gold": False,
                    "active": True,
                    "vote_count": 0,
                    "created_at": _now(),
                }
                for a, b in new
            ],
        )
    return len(new)


def _now() -> datetime:
    from db.types import utcnow

    return utcnow()


def add_to_pool(session: Session, candidate_ids: Sequence[int], *, cross_model_per_candidate: int = 4) -> int:
    """Put candidates in the annotation pool and create their comparisons: every pair of pooled candidates
    of the same generation, and up to ``cross_model_per_candidate`` pairs with pooled candidates of other
    model versions on the same subjects (for the leaderboard). Returns the number of new comparisons."""
    ids = sorted(set(int(i) for i in candidate_ids))
    found = set(session.scalars(select(Candidate.id).where(Candidate.id.in_(ids))))
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFound(f"unknown candidate ids {missing}")
    session.execute(update(Candidate).where(Candidate.id.in_(ids)).values(in_pool=True))
    rows = session.execute(
        select(Candidate.id, Candidate.generation_id, Generation.subjects_key, Generation.model_version_id)
        .join(Generation, Generation.id == Candidate.generation_id)
        .where(Candidate.id.in_(ids))
    ).all()
    within: set[tuple[int, int]] = set()
    cross: set[tuple[int, int]] = set()
    for cid, gen_id, key, mv in rows:
        siblings = session.scalars(
            select(Candidate.id).where(Candidate.generation_id == gen_id, Candidate.in_pool.is_(True))
        )
        within.update(_ordered(cid, s) for s in siblings if s != cid)
        if cross_model_per_candidate > 0:
            others = session.scalars(
                select(Candidate.id)
                .join(Generation, Generation.id == Candidate.generation_id)
                .where(
                    Generation.subjects_key == key,
                    Generation.model_version_id != mv,
                    Candidate.in_pool.is_(True),
                )
                .order_by(Candidate.id)
                .limit(cross_model_per_candidate)
            )
            cross.update(_ordered(cid, o) for o in others)
    created = _ensure_comparisons(session, within, ComparisonKind.within_generation)
    created += _ensure_comparisons(session, cross - within, ComparisonKind.cross_model)
    pooled = select(Candidate.id).where(Candidate.in_pool.is_(True))
    session.execute(
        update(Comparison)
        .where(or_(Comparison.candidate_a_id.in_(ids), Comparison.candidate_b_id.in_(ids)))
        .where(Comparison.active.is_(False))
        .where(Comparison.candidate_a_id.in_(pooled), Comparison.candidate_b_id.in_(pooled))
        .values(active=True)
    )
    session.commit()
    return created


def remove_from_pool(session: Session, candidate_ids: Sequence[int]) -> None:
    """Take candidates out of the pool; their comparisons stop being served (votes are kept)."""
    ids = sorted(set(int(i) for i in candidate_ids))
    session.execute(update(Candidate).where(Candidate.id.in_(ids)).values(in_pool=False))
    session.execute(
        update(Comparison)
        .where(or_(Comparison.candidate_a_id.in_(ids), Comparison.candidate_b_id.in_(ids)))
        .values(active=False)
    )
    session.commit()


def set_gold(session: Session, comparison_id: int, answer: Overall | str, *, by_user_id: int) -> Comparison:
    """Make a comparison a gold item with a known overall answer (researchers and admins only).

    Gold items are served to annotators at the gold rate, score their accuracy and never enter the labels.
    """
    user = get_user(session, by_user_id)
    require_role(user, Role.researcher, "set gold answers")
    try:
        answer = Overall(answer)
    except ValueError:
        raise InputError(
            f"invalid gold answer {answer!r}; expected {'|'.join(o.value for o in Overall)}"
        ) from None
    comp = session.get(Comparison, comparison_id)
    if comp is None:
        raise NotFound(f"unknown comparison id {comparison_id!r}")
    comp.is_gold = True
    comp.gold_answer = answer
    session.commit()
    return comp


# ------------------------------------------------------------------------------------ deletion & expiry
def _delete_generations_and_photos(
    session: Session, gen_filter, photo_filter, data_dir: str | os.PathLike[str], before_files=None
) -> tuple[int, int, int]:
    """Delete the matching rows, then ``before_files(paths)`` (the rows' image paths, still on disk), then the
    image files no other row uses."""
    gen_ids = list(session.scalars(select(Generation.id).where(gen_filter)))
    photo_ids = list(session.scalars(select(ReferencePhoto.id).where(photo_filter)))
    paths: set[str] = set()
    if gen_ids:
        paths.update(
            session.scalars(select(Candidate.image_path).where(Candidate.generation_id.in_(gen_ids)))
        )
    if photo_ids:
        paths.update(session.scalars(select(ReferencePhoto.path).where(ReferencePhoto.id.in_(photo_ids))))
    if gen_ids:
        # comparisons, votes, assignments and badcases of these candidates go with them (ON DELETE CASCADE)
        session.execute(delete(Generation).where(Generation.id.in_(gen_ids)))
    if photo_ids:
        session.execute(delete(ReferencePhoto).where(ReferencePhoto.id.in_(photo_ids)))
    session.flush()
    still_used = set()
    if paths:
        still_used.update(
            session.scalars(select(Candidate.image_path).where(Candidate.image_path.in_(paths)))
        )
        still_used.update(session.scalars(select(ReferencePhoto.path).where(ReferencePhoto.path.in_(paths))))
    session.commit()
    served = before_files(sorted(paths)) if before_files is not None else 0
    removed = remove_files(data_dir, paths - still_used)
    return len(gen_ids), len(photo_ids), removed + served


@dataclass(frozen=True)
class DeletionResult:
    """How many generations, reference photos and files a deletion removed."""

    generations: int
    reference_photos: int
    files: int
    kept_in_pool: int = 0  # generations kept because annotators voted on them (annotation.privacy.visitors)


ServedCopies = Callable[[list[Path]], int]  # deletes the served copies of these image files; returns how many


def delete_visitor_data(
    session: Session, visitor_id: str, data_dir: str | os.PathLike[str], served_copies: ServedCopies | None = None
) -> DeletionResult:
    """Remove every generation and reference photo of a visitor session, with their rows and files (files
    still used by someone else's rows stay). ``served_copies(files)`` is called with the rows' image files
    while they are still on disk (the privacy layer removes the copies the web server served)."""
    if not visitor_id:
        raise InputError("visitor id must not be empty")

    def before_files(paths: list[str]) -> int:
        return served_copies([image_file(data_dir, p) for p in paths]) if served_copies is not None else 0

    g, p, f = _delete_generations_and_photos(
        session, Generation.visitor_id == visitor_id, ReferencePhoto.visitor_id == visitor_id, data_dir,
        before_files,
    )
    logger.info("deleted visitor data: %d generations, %d photos, %d files", g, p, f)
    return DeletionResult(g, p, f)


def sweep_expired(session: Session, now: datetime, data_dir: str | os.PathLike[str],
                  served_copies: ServedCopies | None = None) -> DeletionResult:
    """Remove generations and reference photos whose ``expires_at`` is before ``now``; ``served_copies(files)``
    as in :func:`delete_visitor_data` (called only when some rows go)."""
    if now.tzinfo is None:
        raise InputError(f"now={now!r} must be timezone-aware")

    def before_files(paths: list[str]) -> int:
        if not paths or served_copies is None:
            return 0
        return served_copies([image_file(data_dir, p) for p in paths])

    g, p, f = _delete_generations_and_photos(
        session,
        (Generation.expires_at.is_not(None)) & (Generation.expires_at < now),
        (ReferencePhoto.expires_at.is_not(None)) & (ReferencePhoto.expires_at < now),
        data_dir,
        before_files,
    )
    if g or p:
        logger.info("retention sweep: %d generations, %d photos, %d files", g, p, f)
    return DeletionResult(g, p, f)


__all__ = [
    "CandidateRecord",
    "DeletionResult",
    "GenerationRecord",
    "SubjectRecord",
    "add_candidates",
    "add_to_pool",
    "delete_visitor_data",
    "get_model_version",
    "register_generation",
    "register_model_version",
    "remove_from_pool",
    "set_gold",
    "subjects_key",
    "sweep_expired",
]
