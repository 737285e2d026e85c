"""The Research tab's use-cases, bound to a session factory: counts, annotator stats, agreement, the
leaderboard and preference exports."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class ExportFilters:
    format: str = "parquet"
    with_images: bool = False
    tie_policy: str = "half"
    min_votes: int = 1
    since: datetime | None = None


@dataclass(frozen=True)
class ExportDownload:
    out_dir: Path
    archive: Path
    data_files: list[Path]
    rows: int
    command: str


class ResearchService:
    def __init__(self, sessions, data_dir: str | os.PathLike[str]):
        self.sessions = sessions
        self.data_dir = Path(data_dir)

    def counts(self) -> dict[str, int]:
        from sqlalchemy import func, select

        from db.engine import read_only
        from db.models import Badcase, Candidate, Comparison, Generation, ModelVersion, User, Vote

        tables = {"users": User, "model versions": ModelVersion, "generations": Generation,
                  "candidates": Candidate, "comparisons": Comparison, "votes": Vote, "badcases": Badcase}
        with self.sessions() as session:
            read_only(session)
            out = {name: int(session.scalar(select(func.count()).select_from(t)) or 0) for name, t in tables.items()}
            out["candidates in pool"] = int(session.scalar(
                select(func.count()).select_from(Candidate).where(Candidate.in_pool.is_(True))) or 0)
            session.commit()
        return out

    def annotator_stats(self):
        from annotation.stats import annotator_stats

        with self.sessions() as session:
            return annotator_stats(session)

    def agreement(self):
        from annotation.stats import agreement

        with self.sessions() as session:
            return agreement(session)

    def leaderboard(self):
        from annotation.stats import leaderboard

        with self.sessions() as session:
            return leaderboard(session)

    def export(self, user_id: int, filters: ExportFilters) -> ExportDownload:
        from annotation.export import export_preferences
        from db.types import utcnow

        stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
        out = self.data_dir / "exports" / f"export-{stamp}-u{user_id}"
        with self.sessions() as session:
            result = export_preferences(
                session, out, data_dir=self.data_dir, format=filters.format, with_images=filters.with_images,
                tie_policy=filters.tie_policy, min_votes=filters.min_votes, since=filters.since,
                requested_by=user_id,
            )
        archive = Path(shutil.make_archive(str(out), "zip", root_dir=out))
        data_files = sorted((out / "data").glob(f"*.{filters.format}"))
        return ExportDownload(out, archive, data_files, result.rows, dpo_command(out, filters.format))


def dpo_command(export_dir: str | os.PathLike[str] | None = None, fmt: str = "parquet") -> str:
    """The commands that train DPO on an export (``idglow train dpo``) and serve the result in the app."""
    data = f"{export_dir}/data/train.{fmt}" if export_dir else f"EXPORT_DIR/data/train.{fmt}"
    return (f"idglow train dpo --config configs/dpo.yaml --set train_data={data} --set output_dir=runs/idglow-dpo\n"
            "idglow models add idglow-dpo --adapter runs/idglow-dpo/adapter")
