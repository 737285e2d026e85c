"""The model-version registry beyond ``register_model_version``: list, remove and choose the default
(the version the app offers first). ``idglow models list|remove|default`` call these."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from annotation.store.candidates import get_model_version
from db.models import Generation, ModelVersion
from idglow.errors import InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered version: ``servable`` is True when it has no adapter folder (served by the base) or its
    folder still exists."""

    name: str
    adapter_dir: str | None
    base_model: str | None
    is_default: bool
    generations: int
    servable: bool


def list_model_versions(session: Session) -> list[ModelVersionInfo]:
    """Every registered version, oldest first, with its number of generations."""
    counts = dict(
        session.execute(select(Generation.model_version_id, func.count()).group_by(Generation.model_version_id)).all()
    )
    rows = session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
    return [
        ModelVersionInfo(
            name=mv.name,
            adapter_dir=mv.adapter_dir,
            base_model=mv.base_model,
            is_default=mv.is_default,
            generations=int(counts.get(mv.id, 0)),
            servable=mv.adapter_dir is None or Path(mv.adapter_dir).is_dir(),
        )
        for mv in rows
    ]


def remove_model_version(session: Session, name: str) -> None:
    """Delete a version that has no generations; with generations (votes refer to them) it is refused."""
    mv = get_model_version(session, name)
    used = session.scalar(select(func.count()).select_from(Generation).where(Generation.model_version_id == mv.id))
    if used:
        raise InputError(
            f"model version {name!r} has {used} generation(s) with annotations; it cannot be removed "
            "(delete or expire its generations first)"
        )
    session.delete(mv)
    session.commit()
    logger.info("removed model version %s", name)


def set_default_model_version(session: Session, name: str) -> None:
    """Make ``name`` the version the app offers first (the only default)."""
    mv = get_model_version(session, name)
    session.execute(update(ModelVersion).where(ModelVersion.id != mv.id).values(is_default=False))
    mv.is_default = True
    session.commit()


def default_model_version(session: Session) -> str | None:
    """The name of the default version, or None."""
    return session.scalar(select(ModelVersion.name).where(ModelVersion.is_default.is_(True)).limit(1))
