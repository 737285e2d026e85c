"""The Research tab's use-cases, bound to a session factory: counts, annotator stats, agreement, the
leaderboard and preference exports."""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ExportFilters:
    """What the Research tab's export includes: format, images, tie policy, minimum votes per pair, since when."""

    format: str = "parquet"
    with_images: bool = False
    tie_policy: str = "half"
    min_votes: int = 1
    since: datetime | None = None


@dataclass(frozen=True)
class ExportDownload:
    """A finished export: the folder, its zip and data files, what it holds (``result``: rows per split,
    votes, ties, both-bad rows, what was left out, the dataset card) and the command that trains on the
    unzipped download."""

    out_dir: Path
    archive: Path
    data_files: list[Path]
    rows: int
    command: str
    result: Any = None
    with_images: bool = True
    store_votes: int | None = None  # every vote in the store, gold and filtered-out ones included


@dataclass(frozen=True)
class Leaderboard:
    """The ranked model versions and when the newest vote behind them was cast (None without votes)."""

    rows: list[Any]
    last_vote_at: datetime | None


class ResearchService:
    """The Research tab's use-cases on the preference store: counts, annotator stats, agreement, leaderboard, export."""

    def __init__(self, sessions, data_dir: str | os.PathLike[str], served: ServedWeights | None = None):
        self.sessions = sessions
        self.data_dir = Path(data_dir)
        self.served = served or ServedWeights()

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
        from annotation.store.stats import annotator_stats

        with self.sessions() as session:
            return annotator_stats(session)

    def agreement(self):
        from annotation.store.stats import agreement

        with self.sessions() as session:
            return agreement(session)

    def leaderboard(self) -> Leaderboard:
        from sqlalchemy import func, select

        from annotation.store.stats import leaderboard
        from db.models import Comparison

        with self.sessions() as session:
            rows = leaderboard(session)
            last = session.scalar(select(func.max(Comparison.last_vote_at)).where(Comparison.is_gold.is_not(True)))
            session.commit()
        return Leaderboard(rows, last)

    def export(self, user_id: int, filters: ExportFilters) -> ExportDownload:
        from annotation.store.export import export_preferences
        from db.types import utcnow

        stamp = utcnow().strftime("%Y%m%d-%H%M%S")
        out = self.data_dir / "exports" / f"export-{stamp}-u{user_id}"
        for k in range(2, 1000):  # two exports in the same second
            if not out.exists():
                break
            out = self.data_dir / "exports" / f"export-{stamp}-u{user_id}-{k}"
        with self.sessions() as session:
            result = export_preferences(
                session, out, data_dir=self.data_dir, format=filters.format, with_images=filters.with_images,
                tie_policy=filters.tie_policy, min_votes=filters.min_votes, since=filters.since,
                requested_by=user_id,
            )
        archive = Path(shutil.make_archive(str(out), "zip", root_dir=out))
        data_files = sorted((out / "data").glob(f"*.{filters.format}"))
        return ExportDownload(out, archive, data_files, result.rows, dpo_command(archive.name, filters.format, self.served),
                              result=result, with_images=filters.with_images, store_votes=self.counts()["votes"])


@dataclass(frozen=True)
class ServedWeights:
    """The weights the app serves, which the training command shown to researchers starts from: a FLUX folder
    and an adapter folder, or (``model_dir`` None) the tiny demo model."""

    model_dir: str | None = None
    adapter_dir: str | None = None

    def train_flags(self) -> str:
        """``--set`` options of ``idglow train dpo`` for these weights (the tiny model: README's tiny-model flags;
        without an adapter DPO starts from a fresh one)."""
        adapter = f"--set adapter={shlex.quote(self.adapter_dir) if self.adapter_dir else 'null'}"
        if self.model_dir is None:
            return (f"--set model=tiny {adapter} --set max_steps=2 --set resolution=64 --set mixed_precision=no "
                    "--set report_to=none")
        return f"--set model={shlex.quote(self.model_dir)} {adapter}"


def dpo_command(archive_name: str | None = None, fmt: str = "parquet", served: ServedWeights | None = None) -> str:
    """The commands that unzip a downloaded export beside a checkout, train DPO on it from the weights the app
    serves (``served``, the tiny demo model by default) and register the result for the app."""
    name = Path(archive_name).stem if archive_name else "EXPORT"
    model = "dpo-" + name.removeprefix("export-").rsplit("-u", 1)[0] if archive_name else "dpo-v1"
    lines = [f"unzip {name}.zip -d {name}"]
    if fmt != "parquet":
        lines.append(f"# the trainer reads Parquet: export as parquet to train on {name}")
    flags = (served or ServedWeights()).train_flags()
    lines += [f"idglow train dpo --config configs/dpo.yaml {flags} --set train_data={name} "
              f"--set output_dir=runs/{model}",
              f"idglow models add {model} --adapter runs/{model}/adapter"]
    return "\n".join(lines)
