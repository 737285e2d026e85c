"""Typed SQLAlchemy models of the preference store (DESIGN §7).

Every constraint has a name, every foreign key says what happens on delete and has an index, enums are
stored as checked strings (portable between SQLite and PostgreSQL) and every timestamp is tz-aware UTC.
Votes store candidate ids (``candidate_a`` / ``candidate_b`` of their comparison), never screen sides alone.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from db.types import UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of the store's tables; constraints and indexes are named by NAMING_CONVENTION."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Role(str, enum.Enum):
    """What a user may do; each role includes the ones before it."""

    annotator = "annotator"
    researcher = "researcher"
    admin = "admin"


class Task(str, enum.Enum):
    """What a generation does with the people: put them in one photo (fusion) or show them at target ages
    (age)."""

    fusion = "fusion"
    age = "age"


class Overall(str, enum.Enum):
    """Overall preference between candidate A and candidate B of a comparison."""

    a = "a"
    b = "b"
    tie = "tie"
    both_bad = "both_bad"


class ComparisonKind(str, enum.Enum):
    """Whether the two candidates come from one generation or from two model versions on the same people."""

    within_generation = "within_generation"
    cross_model = "cross_model"


class AssignmentStatus(str, enum.Enum):
    """Where a served comparison stands for its annotator."""

    open = "open"
    voted = "voted"
    skipped = "skipped"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=24,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


def _created() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class User(Base):
    """A user of the annotation app (annotator, researcher or admin) with an Argon2 password hash."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), nullable=False)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    role: Mapped[Role] = mapped_column(_enum(Role, "user_role"), nullable=False)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[datetime] = _created()

    __table_args__ = (UniqueConstraint("username", name="user_username_uq"),)


class ModelVersion(Base):
    """A model (base model + adapter folder) whose generations are compared."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    adapter_dir: Mapped[str | None] = mapped_column(String(1024))
    base_model: Mapped[str | None] = mapped_column(String(256))
    notes: Mapped[str | None] = mapped_column(Text)
    # the version the app offers first (`idglow models default NAME`); at most one is set
    is_default: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    created_at: Mapped[datetime] = _created()

    __table_args__ = (UniqueConstraint("name", name="model_version_name_uq"),)


class ReferencePhoto(Base):
    """A person's reference photo, stored by content hash; a visitor's photos carry ``visitor_id`` and expire."""

    __tablename__ = "reference_photos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    path: Mapped[str] = mapped_column(String(1024), nullable=False)
    consent: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    visitor_id: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)


class Generation(Base):
    """One request: task, prompts, parameters, the model version and the people (``subjects``)."""

    __tablename__ = "generations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[Task] = mapped_column(_enum(Task, "generation_task"), nullable=False)
    user_prompt: Mapped[str] = mapped_column(Text, nullable=False, default="")
    final_prompt: Mapped[str] = mapped_column(Text, nullable=False)
    prompt_source: Mapped[str] = mapped_column(String(32), nullable=False, default="user")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    visitor_id: Mapped[str | None] = mapped_column(String(64), index=True)
    subjects_key: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    num_subjects: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)

    model_version: Mapped[ModelVersion] = relationship()
    subjects: Mapped[list[GenerationSubject]] = relationship(
        back_populates="generation", order_by="GenerationSubject.slot", passive_deletes=True
    )
    candidates: Mapped[list[Candidate]] = relationship(
        back_populates="generation", order_by="Candidate.id", passive_deletes=True
    )

    __table_args__ = (CheckConstraint("num_subjects BETWEEN 1 AND 6", name="num_subjects_range"),)


class GenerationSubject(Base):
    """A person of a generation: their slot, reference photo, target age, label and the word the visitor chose to
    describe them (woman, man, girl, boy; NULL: left to the model). Columns other than the keys are named as the
    fields of ``idglow.subjects.SubjectRef`` they store."""

    __tablename__ = "generation_subjects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation_id: Mapped[int] = mapped_column(
        ForeignKey("generations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    slot: Mapped[int] = mapped_column(Integer, nullable=False)
    reference_photo_id: Mapped[int | None] = mapped_column(
        ForeignKey("reference_photos.id", ondelete="SET NULL"), index=True
    )
    target_age: Mapped[float | None] = mapped_column(Float)
    label: Mapped[str | None] = mapped_column(String(128))
    describe_as: Mapped[str | None] = mapped_column(String(16))

    generation: Mapped[Generation] = relationship(back_populates="subjects")
    reference_photo: Mapped[ReferencePhoto | None] = relationship()

    __table_args__ = (
        UniqueConstraint("generation_id", "slot", name="generation_subject_slot_uq"),
        CheckConstraint("slot BETWEEN 0 AND 5", name="slot_range"),
        CheckConstraint("describe_as IN ('woman', 'man', 'girl', 'boy')", name="describe_as_word"),
    )


class Candidate(Base):
    """One generated image with its faces, face matches and metrics; ``in_pool`` ones are compared."""

    __tablename__ = "candidates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation_id: Mapped[int] = mapped_column(
        ForeignKey("generations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    seed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    image_path: Mapped[str] = mapped_column(String(1024), nullable=False)
    image_sha256: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    faces: Mapped[list[Any] | None] = mapped_column(JSON)
    face_matches: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    in_pool: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = _created()

    generation: Mapped[Generation] = relationship(back_populates="candidates")

    __table_args__ = (
        UniqueConstraint("generation_id", "image_sha256", name="candidate_generation_image_uq"),
    )


class Comparison(Base):
    """A pair of candidates to vote on (A has the smaller id); gold items carry the known answer."""

    __tablename__ = "comparisons"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    candidate_a_id: Mapped[int] = mapped_column(
        ForeignKey("candidates.id", ondelete="CASCADE"), nullable=False, index=True
    )
    candidate_b_id: Mapped[int] = mapped_column(
        ForeignKey("candidates.id", ondelete="CASCADE"), nullable=False, index=True
    )
    kind: Mapped[ComparisonKind] = mapped_column(_enum(ComparisonKind, "comparison_kind"), nullable=False)
    is_gold: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    gold_answer: Mapped[Overall | None] = mapped_column(_enum(Overall, "gold_answer"))
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    vote_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_vote_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()

    candidate_a: Mapped[Candidate] = relationship(foreign_keys=[candidate_a_id])
    candidate_b: Mapped[Candidate] = relationship(foreign_keys=[candidate_b_id])

    __table_args__ = (
        UniqueConstraint("candidate_a_id", "candidate_b_id", name="comparison_pair_uq"),
        CheckConstraint("candidate_a_id < candidate_b_id", name="ordered_pair"),
        CheckConstraint("NOT is_gold OR gold_answer IS NOT NULL", name="gold_has_answer"),
        CheckConstraint("vote_count >= 0", name="vote_count_nonnegative"),
        Index("ix_comparisons_sampling", "is_gold", "active", "vote_count"),
    )


class Assignment(Base):
    """A comparison served to a user by ``next_comparison``, with the side candidate A was shown on."""

    __tablename__ = "assignments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    comparison_id: Mapped[int] = mapped_column(
        ForeignKey("comparisons.id", ondelete="CASCADE"), nullable=False, index=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    shown_left_id: Mapped[int] = mapped_column(
        ForeignKey("candidates.id", ondelete="CASCADE"), nullable=False, index=True
    )
    status: Mapped[AssignmentStatus] = mapped_column(
        _enum(AssignmentStatus, "assignment_status"), nullable=False, default=AssignmentStatus.open
    )
    created_at: Mapped[datetime] = _created()

    __table_args__ = (
        UniqueConstraint("comparison_id", "user_id", name="assignment_comparison_user_uq"),
        Index("ix_assignments_comparison_status", "comparison_id", "status"),
        Index("ix_assignments_user_status", "user_id", "status"),
    )


class Vote(Base):
    """One annotator's answers on a comparison.

    ``overall`` holds the answer to the primary question (a|b|tie|both_bad, in terms of candidates A and B),
    a column of its own because gold checks and the leaderboard aggregate it in SQL. ``answers`` holds every
    other answer keyed by question name (``idglow.preferences.QUESTIONS``): a value, or ``{slot: value}`` for
    a per-person question, e.g. ``{"strength": "clear", "identity": {"0": "a"}, "texture": "tie"}``; the
    store checks them against the declaration before writing.
    """

    __tablename__ = "votes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    comparison_id: Mapped[int] = mapped_column(
        ForeignKey("comparisons.id", ondelete="CASCADE"), nullable=False, index=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    overall: Mapped[Overall] = mapped_column(_enum(Overall, "vote_overall"), nullable=False)
    answers: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    shown_left_id: Mapped[int] = mapped_column(
        ForeignKey("candidates.id", ondelete="CASCADE"), nullable=False, index=True
    )
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    idempotency_key: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[datetime] = _created()

    __table_args__ = (
        UniqueConstraint("comparison_id", "user_id", name="vote_comparison_user_uq"),
        UniqueConstraint("idempotency_key", name="vote_idempotency_key_uq"),
        CheckConstraint("duration_ms IS NULL OR duration_ms >= 0", name="duration_nonnegative"),
        Index("ix_votes_user_created", "user_id", "created_at"),
    )


class Badcase(Base):
    """A candidate flagged as a failure, with the failure types and the annotator's note."""

    __tablename__ = "badcases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    candidate_id: Mapped[int] = mapped_column(
        ForeignKey("candidates.id", ondelete="CASCADE"), nullable=False, index=True
    )
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    task: Mapped[Task] = mapped_column(_enum(Task, "badcase_task"), nullable=False, index=True)
    failure_types: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    note: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[datetime] = _created()


class Export(Base):
    """A preference export: who asked, where it went, its parameters and its manifest's hash."""

    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    out_dir: Mapped[str] = mapped_column(String(1024), nullable=False)
    format: Mapped[str] = mapped_column(String(16), nullable=False)
    num_rows: Mapped[int] = mapped_column(Integer, nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    manifest_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = _created()
