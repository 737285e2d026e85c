"""Export of the preferences as a Pick-a-Pic v2 compatible dataset (Parquet or JSONL), one row per comparison.

Rows are streamed from the database in pages of comparisons (memory does not grow with the number of rows)
and written per split (``data/{train,validation,test}.{parquet,jsonl}``) with a dataset card (``README.md``)
and ``manifest.json`` holding the sha256 of every file. The same database gives byte-identical files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import String, Text, func, select, type_coerce
from sqlalchemy.orm import Session

from annotation.store.badcase_store import write_badcases_jsonl
from annotation.store.storage import file_sha256, image_file
from annotation.store.users import get_user, require_role
from db.engine import read_only
from db.models import (
    Candidate,
    Comparison,
    Export,
    Generation,
    GenerationSubject,
    ModelVersion,
    Overall,
    ReferencePhoto,
    Role,
    Vote,
)
from idglow import preferences
from idglow.errors import InputError
from idglow.losses import DEFAULT_DPO_LOSS, DPO_LOSSES
from idglow.preferences import Question, answer_strength
from idglow.subjects import MAX_SUBJECTS

logger = logging.getLogger(__name__)

SPLITS = (("train", 0.90), ("validation", 0.95), ("test", 1.0))


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("caption", pa.string()),
            ("jpg_0", pa.binary()),
            ("jpg_1", pa.binary()),
            ("label_0", pa.float64()),
            ("label_1", pa.float64()),
            ("image_0_uid", pa.string()),
            ("image_1_uid", pa.string()),
            ("model_0", pa.string()),
            ("model_1", pa.string()),
            ("user_id", pa.int64()),
            ("ranking_id", pa.int64()),
            ("created_at", pa.timestamp("us", tz="UTC")),
            ("has_label", pa.bool_()),
            ("are_different", pa.bool_()),
            ("best_image_uid", pa.string()),
            # group columns
            ("task", pa.string()),
            ("num_subjects", pa.int32()),
            ("reference_uids", pa.list_(pa.string())),
            ("reference_images", pa.list_(pa.binary())),
            ("reference_embeddings", pa.list_(pa.list_(pa.float32()))),
            ("face_backend", pa.string()),
            ("target_ages", pa.list_(pa.float64())),
            ("subject_labels", pa.list_(pa.string())),
            ("subject_describe_as", pa.list_(pa.string())),
            ("clip_caption", pa.string()),
            *_question_fields(),
            ("agreement", pa.float64()),
            ("num_votes", pa.int32()),
            ("votes_0", pa.int32()),
            ("votes_1", pa.int32()),
            ("votes_tie", pa.int32()),
            ("votes_both_bad", pa.int32()),
            ("annotator_ids", pa.list_(pa.int64())),
            ("faces_0", pa.string()),
            ("faces_1", pa.string()),
            ("metrics_0", pa.string()),
            ("metrics_1", pa.string()),
            ("comparison_kind", pa.string()),
            ("split", pa.string()),
        ]
    )


def _question_fields() -> list[tuple[str, Any]]:
    """The columns of the declared questions other than the primary one (whose labels are ``label_0`` and
    ``label_1``), in declaration order: image-0 labels (a list per person for a per-person question), or for
    a grade the mean strength of the agreeing votes."""
    import pyarrow as pa

    main = preferences.primary()
    return [(q.column, pa.list_(pa.float64()) if q.per_person else pa.float64())
            for q in preferences.declared() if q is not main]


def split_for(subjects_key: str) -> str:
    """Stable split of a group of people: everything about the same subjects lands in the same split."""
    frac = int(hashlib.sha256(f"split:{subjects_key}".encode()).hexdigest()[:12], 16) / 16**12
    return next(name for name, upper in SPLITS if frac < upper)


def _majority(values: list[str]) -> str | None:
    if not values:
        return None
    first = values[0]
    if values.count(first) == len(values):
        return first
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    top = max(counts.values())
    winners = [k for k, v in counts.items() if v == top]
    return winners[0] if len(winners) == 1 else "tie"


@dataclass(frozen=True)
class Aggregate:
    """The overall votes on one comparison folded into Pick-a-Pic labels, agreement and strength."""

    label_0: float
    label_1: float
    has_label: bool
    outcome: str  # a | b | tie | both_bad
    agreement: float
    strength: float


def aggregate_overall(votes: list[tuple[Overall | str, str | None]]) -> Aggregate:
    """Majority label of a comparison's overall votes (candidate A is image 0).

    The most frequent answer wins; a draw between a and b (or with tie) is a tie (0.5/0.5); a plurality of
    both_bad gives ``has_label=False``. agreement: share of votes equal to the outcome. strength: mean
    strength (slight 0.5, clear 1.0) of the votes that agree, 0 for ties and unlabelled rows.
    """
    return _aggregate([Overall(v).value for v, _ in votes], [s for _, s in votes])


def _strength_of(value: str | None) -> float:
    """The strength a vote's grade of the primary question stands for; an ungraded a|b vote counts as clear."""
    grade = preferences.grade_of(preferences.primary())
    return 1.0 if value is None or grade is None else answer_strength(grade, value)


def _aggregate(overall: list[str], strength: list[str | None]) -> Aggregate:
    return _aggregate_counts(overall, strength)[0]


def _aggregate_counts(overall: list[str], strength: list[str | None]) -> tuple[Aggregate, dict[str, int]]:
    counts: dict[str, int] = {}
    for v in overall:
        counts[v] = counts.get(v, 0) + 1
    n = len(overall)
    top = max(counts.values())
    winners = sorted(k for k, v in counts.items() if v == top)
    if winners == ["both_bad"]:
        outcome = "both_bad"
    elif len(winners) == 1:
        outcome = winners[0]
    else:
        outcome = "tie"
    agreeing = [s for v, s in zip(overall, strength) if v == outcome]
    agreement = len(agreeing) / n if agreeing else top / n
    if outcome in ("a", "b"):
        mean = sum(_strength_of(s) for s in agreeing) / len(agreeing)
        labels = (1.0, 0.0) if outcome == "a" else (0.0, 1.0)
        return Aggregate(*labels, True, outcome, agreement, mean), counts
    if outcome == "tie":
        return Aggregate(0.5, 0.5, True, outcome, agreement, 0.0), counts
    return Aggregate(0.0, 0.0, False, outcome, agreement, 0.0), counts


class _ParquetSink:
    def __init__(self, path: Path, schema):
        import pyarrow.parquet as pq

        self.path = path
        self.schema = schema
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")

    def write(self, columns: dict[str, list[Any]]) -> None:
        import pyarrow as pa

        self.writer.write_table(pa.Table.from_pydict(columns, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


class _JsonlSink:
    def __init__(self, path: Path, schema):
        self.path = path
        self.fh = open(path, "w", encoding="utf-8")

    @staticmethod
    def _value(value: Any) -> Any:
        if isinstance(value, bytes):
            return base64.b64encode(value).decode("ascii")
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, list):
            return [_JsonlSink._value(v) for v in value]
        return value

    def write(self, columns: dict[str, list[Any]]) -> None:
        names = list(columns)
        for values in zip(*columns.values()):
            row = {k: self._value(v) for k, v in zip(names, values)}
            self.fh.write(json.dumps(row, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self.fh.close()


@dataclass
class ExportResult:
    """What an export wrote and what it left out.

    ``votes``: votes behind the exported rows (one row per comparison, several votes each); ``ties`` and
    ``both_bad``: exported rows whose majority was a tie (labels 0.5/0.5) or "both bad" (``has_label``
    false); ``dropped``: comparisons with votes that were left out, per reason.
    """

    out_dir: Path
    rows: int
    rows_per_split: dict[str, int]
    dropped_ties: int
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    votes: int = 0
    ties: int = 0
    both_bad: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    card: str = ""


def _read(data_dir: Path | None, rel: str | None) -> bytes | None:
    if rel is None or data_dir is None:
        return None
    path = image_file(data_dir, rel)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(
            f"image file {path} is missing: the images are looked up under the data dir {data_dir.resolve()} "
            "(set it with --data-dir or $IDGLOW_DATA_DIR; by default the folder of the SQLite file)"
        ) from None


def _check_export_options(
    format: str, tie_policy: str, min_votes: int, since: datetime | None, with_images: bool, data_dir: Any
) -> None:
    """Raise InputError naming the first option :func:`export_preferences` cannot use."""
    if format not in ("parquet", "jsonl"):
        raise InputError(f"unknown export format {format!r}; expected parquet|jsonl")
    if tie_policy not in ("drop", "half"):
        raise InputError(f"unknown tie policy {tie_policy!r}; expected drop|half")
    if min_votes < 1:
        raise InputError(f"min_votes must be >= 1, got {min_votes}")
    if since is not None and since.tzinfo is None:
        raise InputError(f"since={since.isoformat()} must be timezone-aware")
    if with_images and data_dir is None:
        raise InputError("with_images needs the data dir that holds the images")


def _staged_export(session: Session, out: Path, write: Callable[[Path], ExportResult]) -> ExportResult:
    """``write`` the export into a temporary folder beside ``out``, renamed to ``out`` at the end; a failure
    leaves nothing behind."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"export folder {out} is not empty; choose a new --out folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        result = write(staging)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        session.rollback()
        raise
    result.out_dir = out
    return result


def export_preferences(
    session: Session,
    out_dir: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    format: Literal["parquet", "jsonl"] = "parquet",
    with_images: bool = False,
    tie_policy: Literal["drop", "half"] = "half",
    min_votes: int = 1,
    since: datetime | None = None,
    requested_by: int | None = None,
    page_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Write the labelled comparisons of the store to ``out_dir`` (which must be empty or absent).

    Gold items are not exported. ``min_votes``: comparisons with fewer overall votes are left out.
    ``since``: only comparisons with a vote at or after this time. ``tie_policy``: ``half`` keeps tied rows
    with labels 0.5/0.5, ``drop`` leaves them out. ``with_images`` embeds the PNG bytes of both candidates
    and the reference photos (then ``data_dir`` is needed). ``requested_by``: a user id that must be a
    researcher or admin (the CLI, run by whoever holds the database credentials, passes none).
    ``progress(done, total)`` is called after every page.

    Files are written to a temporary folder beside ``out_dir`` that is renamed at the end: a failed export
    leaves nothing behind, and the same command can be run again.
    """
    _check_export_options(format, tie_policy, min_votes, since, with_images, data_dir)
    if requested_by is not None:
        require_role(get_user(session, requested_by), Role.researcher, "export preferences")
        session.commit()
    params = {
        "format": format,
        "with_images": with_images,
        "tie_policy": tie_policy,
        "min_votes": min_votes,
        "since": since.isoformat() if since else None,
    }
    out = Path(out_dir)
    result = _staged_export(
        session, out, lambda staging: _write_export(session, staging, params, data_dir, page_size, progress)
    )
    manifest_sha256 = file_sha256(out / "manifest.json")
    session.add(
        Export(
            user_id=requested_by,
            out_dir=str(out.resolve()),
            format=format,
            num_rows=result.rows,
            params=params,
            manifest_sha256=manifest_sha256,
        )
    )
    session.commit()
    logger.info("exported %d rows to %s", result.rows, out)
    return result


def _write_export(
    session: Session,
    out: Path,
    params: dict[str, Any],
    data_dir: str | os.PathLike[str] | None,
    page_size: int | None,
    progress: Callable[[int, int], None] | None,
) -> ExportResult:
    """Write the data files, the dataset card and the manifest into ``out``."""
    fmt, with_images = params["format"], params["with_images"]
    since = datetime.fromisoformat(params["since"]) if params["since"] else None
    page_size = page_size or (64 if with_images else 2000)
    data_path = Path(data_dir) if data_dir is not None else None
    read_only(session)
    where = _exported(params["min_votes"], since)
    total = int(session.scalar(select(func.count()).select_from(Comparison).where(*where)) or 0)
    left_out = _left_out(session, params["min_votes"], since)

    schema = _schema()
    (out / "data").mkdir(parents=True, exist_ok=True)
    sinks: dict[str, Any] = {}
    rows_per_split: Counter[str] = Counter()
    done = last_id = 0
    sink_cls = _ParquetSink if fmt == "parquet" else _JsonlSink
    pages = _PageBuilder(session, schema.names, data_path, with_images, drop_ties=params["tie_policy"] == "drop")
    try:
        while comps := session.execute(_page(where, last_id, page_size)).all():
            last_id = comps[-1][0]
            by_split, _ = pages.build(comps)
            for split in sorted(by_split):
                if split not in sinks:
                    sinks[split] = sink_cls(out / "data" / f"{split}.{fmt}", schema)
                sinks[split].write(by_split[split])
                rows_per_split[split] += len(by_split[split]["ranking_id"])
            done += len(comps)
            if progress is not None:
                progress(done, total)
    finally:
        for sink in sinks.values():
            sink.close()
        session.commit()

    counts = {s: rows_per_split[s] for s, _ in SPLITS if rows_per_split[s]}
    if pages.dropped_ties:
        left_out["tie (tie policy drop)"] = pages.dropped_ties
    badcases = write_badcases_jsonl(session, out / "badcases.jsonl")
    card = _card(counts, params, pages.dropped_ties, fmt, _provenance(pages.votes, counts, pages, left_out))
    card += (f"\n`badcases.jsonl` holds the {badcases} bad case(s) annotators flagged (failure types, task, note, the "
             "prompt that made the image), in the format `idglow prompt --badcases` reads.\n")
    (out / "README.md").write_text(card, encoding="utf-8")
    files = {p.relative_to(out).as_posix(): file_sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {"rows": sum(counts.values()), "rows_per_split": counts, "params": params, "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return ExportResult(out, manifest["rows"], counts, pages.dropped_ties, files, votes=pages.votes,
                        ties=pages.ties, both_bad=pages.both_bad, dropped=left_out, card=card)


def _left_out(session: Session, min_votes: int, since: datetime | None) -> dict[str, int]:
    """Comparisons with votes that the export leaves out, per reason (gold items, too few votes, too old)."""
    voted = Comparison.vote_count > 0
    reasons = {
        "gold item (kept for annotator checks)": [voted, Comparison.is_gold.is_(True)],
        f"fewer than {min_votes} vote(s)": [voted, Comparison.is_gold.is_not(True), Comparison.vote_count < min_votes],
    }
    if since is not None:
        reasons[f"last vote before {since.date().isoformat()}"] = [
            Comparison.is_gold.is_not(True), Comparison.vote_count >= min_votes, Comparison.last_vote_at < since
        ]
    counts = {
        reason: int(session.scalar(select(func.count()).select_from(Comparison).where(*where)) or 0)
        for reason, where in reasons.items()
    }
    return {reason: n for reason, n in counts.items() if n}


def _exported(min_votes: int, since: datetime | None) -> list[Any]:
    """Conditions on the comparisons an export holds (gold items never)."""
    # `is_gold IS NOT true` rather than `= false`: with the latter SQLite pages through the sampling index
    # (is_gold, active, vote_count) and sorts every page; this way a page is a walk along the primary key
    where = [Comparison.is_gold.is_not(True), Comparison.vote_count >= min_votes]
    if since is not None:
        where.append(Comparison.last_vote_at >= since)
    return where


def _page(where: list[Any], after_id: int, size: int):
    """The next ``size`` exported comparisons with id > ``after_id``: (id, candidate a, candidate b, kind)."""
    return (
        select(
            Comparison.id,
            Comparison.candidate_a_id,
            Comparison.candidate_b_id,
            type_coerce(Comparison.kind, String),
        )
        .where(*where, Comparison.id > after_id)
        .order_by(Comparison.id)
        .limit(size)
    )


@dataclass(frozen=True)
class _CandidateInfo:
    generation_id: int
    uid: str
    image_path: str
    faces: str  # the faces_* column (JSON text)
    metrics: str  # the metrics_* column (JSON text)


@dataclass(frozen=True)
class _GenerationInfo:
    caption: str
    task: str
    num_subjects: int
    model: str
    split: str
    reference_uids: list[str | None]
    reference_paths: list[str | None]
    target_ages: list[float | None]
    subject_labels: list[str | None]
    subject_describe_as: list[str | None]
    clip_caption: str  # the text the pipeline gave CLIP (the prompt writer's compact text, else the caption)
    reference_embeddings: list[list[float]] | None  # per slot, as stored by the app (None: not stored)
    face_backend: str | None  # the face backend that computed them


_SLOT_KEYS = tuple(str(slot) for slot in range(MAX_SUBJECTS))


@dataclass(frozen=True)
class _StoredVote:
    user_id: int
    answers: dict[str, Any]  # question name -> answer (the primary one included)
    created_at: Any  # as selected (stored text on SQLite)


def _graded_strength(question: Question, grade: Question, answers: list[dict[str, Any]], slot: str | None,
                     ) -> float | None:
    """Mean strength of the ``grade`` answers of the votes that agree with the majority on ``question``
    (on one slot of a per-person question); None when the majority is not gradable or nobody graded it."""
    def answer(a: dict[str, Any], name: str) -> Any:
        value = a.get(name)
        return value.get(slot) if slot is not None and isinstance(value, dict) else value

    outcome = _majority([v for a in answers if (v := answer(a, question.name)) is not None])
    if outcome not in grade.grades_values:
        return None
    strengths = [answer_strength(grade, answer(a, grade.name)) for a in answers
                 if answer(a, question.name) == outcome and answer(a, grade.name) is not None]
    return sum(strengths) / len(strengths) if strengths else None


def _majority_label(question: Question, answers: list[dict[str, Any]], slot: str | None) -> float | None:
    values = [a[question.name] if slot is None else a[question.name].get(slot)
              for a in answers if a.get(question.name) is not None]
    return question.label_0(_majority([v for v in values if v is not None]))


def question_columns(answers: list[dict[str, Any]], num_subjects: int, agg: Aggregate) -> list[Any]:
    """The values of :func:`_question_fields` for one comparison from its votes' answers by question name:
    the majority label of image 0 per question (per slot for a per-person question; null when nobody
    answered), and for a grade the mean strength of the votes agreeing with the majority (the primary
    question's grade: ``agg.strength``, 0 for ties)."""
    questions = preferences.by_name()
    main = preferences.primary()
    out: list[Any] = []
    for q in questions.values():
        if q is main:
            continue
        if q.grades == main.name:
            out.append(agg.strength)
            continue
        slots = _SLOT_KEYS[:num_subjects] if q.per_person else (None,)
        if q.grades is not None:
            values = [_graded_strength(questions[q.grades], q, answers, slot) for slot in slots]
        else:
            values = [_majority_label(q, answers, slot) for slot in slots]
        out.append(values if q.per_person else values[0])
    return out
_CANDIDATE_CACHE = 100_000  # candidates kept between pages (~0.5 KB each; a candidate recurs across pages)


class _PageBuilder:
    """Turns pages of comparisons into columns, one set of columns per split.

    Candidates and generations are read once per export and cached (their JSON is re-encoded once, not once
    per row), columns are read without ORM objects, and on SQLite the JSON, enum and timestamp columns come
    back as stored text and are decoded here only where a value is needed.
    """

    def __init__(
        self,
        session: Session,
        names: list[str],
        data_dir: Path | None,
        with_images: bool,
        *,
        drop_ties: bool,
    ):
        self.conn = session.connection()  # Core rows, no ORM loading
        self.names = names
        self.data_dir = data_dir
        self.with_images = with_images
        self.drop_ties = drop_ties
        dialect = session.get_bind().dialect
        self.raw = dialect.name == "sqlite"
        created = Vote.__table__.c.created_at.type
        self.to_datetime = created.dialect_impl(dialect).result_processor(dialect, None) if self.raw else None
        self.candidates: dict[int, _CandidateInfo] = {}
        self.generations: dict[int, _GenerationInfo] = {}
        self.answers_cache: dict[str, dict[str, Any]] = {}
        self.votes = self.ties = self.both_bad = self.dropped_ties = 0

    def _col(self, column, type_):  # noqa: ANN001
        """``column`` as stored (no result processing) on SQLite; typed elsewhere."""
        return type_coerce(column, type_) if self.raw else column

    def _datetime(self, value: Any) -> datetime:
        """A vote time as selected (stored text on SQLite)."""
        if not self.raw:
            return value
        try:  # the SQLite storage format is ISO 8601 in UTC; much faster than the generic parser
            return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
        except ValueError:
            return self.to_datetime(value)

    def _json(self, value: Any) -> Any:
        return json.loads(value) if self.raw and value is not None else value

    def _load_candidates(self, ids: set[int]) -> None:
        missing = sorted(i for i in ids if i not in self.candidates)
        if not missing:
            return
        if len(self.candidates) + len(missing) > _CANDIDATE_CACHE:
            self.candidates.clear()
            missing = sorted(ids)
        rows = self.conn.execute(
            select(
                Candidate.id,
                Candidate.generation_id,
                Candidate.image_sha256,
                Candidate.image_path,
                self._col(Candidate.faces, Text),
                self._col(Candidate.face_matches, Text),
                self._col(Candidate.metrics, Text),
            ).where(Candidate.id.in_(missing))
        )
        for cid, gen_id, sha, path, faces, matches, metrics in rows:
            faces_json = json.dumps(
                {"matches": self._json(matches), "faces": self._json(faces)}, sort_keys=True
            )
            self.candidates[cid] = _CandidateInfo(
                gen_id, sha, path, faces_json, json.dumps(self._json(metrics), sort_keys=True)
            )
        self._load_generations({c.generation_id for c in map(self.candidates.get, ids)})

    def _load_generations(self, ids: set[int]) -> None:
        missing = sorted(i for i in ids if i not in self.generations)
        if not missing:
            return
        if len(self.generations) + len(missing) > _CANDIDATE_CACHE:
            self.generations.clear()
            missing = sorted(ids)
        subjects: dict[int, list[Any]] = defaultdict(list)
        for r in self.conn.execute(
            select(
                GenerationSubject.generation_id,
                GenerationSubject.target_age,
                GenerationSubject.label,
                GenerationSubject.describe_as,
                ReferencePhoto.sha256,
                ReferencePhoto.path,
            )
            .outerjoin(ReferencePhoto, ReferencePhoto.id == GenerationSubject.reference_photo_id)
            .where(GenerationSubject.generation_id.in_(missing))
            .order_by(GenerationSubject.generation_id, GenerationSubject.slot)
        ):
            subjects[r.generation_id].append(r)
        splits: dict[str, str] = {}
        for gid, task, caption, num_subjects, key, model, params in self.conn.execute(
            select(
                Generation.id,
                type_coerce(Generation.task, String),
                Generation.final_prompt,
                Generation.num_subjects,
                Generation.subjects_key,
                ModelVersion.name,
                self._col(Generation.params, Text),
            )
            .join(ModelVersion, ModelVersion.id == Generation.model_version_id)
            .where(Generation.id.in_(missing))
        ):
            subj = subjects[gid]
            embeddings, backend = _stored_embeddings(self._json(params) or {}, num_subjects)
            if key not in splits:
                splits[key] = split_for(key)
            self.generations[gid] = _GenerationInfo(
                caption=caption,
                task=task,
                num_subjects=num_subjects,
                model=model,
                split=splits[key],
                reference_uids=[s.sha256 for s in subj],
                reference_paths=[s.path for s in subj],
                target_ages=[s.target_age for s in subj],
                subject_labels=[s.label for s in subj],
                subject_describe_as=[s.describe_as for s in subj],
                clip_caption=(self._json(params) or {}).get("prompt") or caption,
                reference_embeddings=embeddings,
                face_backend=backend,
            )

    def _answers(self, value: Any) -> dict[str, Any]:
        """A vote's ``answers`` JSON as selected (stored text on SQLite, parsed once per distinct text)."""
        if not self.raw or value is None:
            return value or {}
        parsed = self.answers_cache.get(value)
        if parsed is None:
            if len(self.answers_cache) > 10_000:
                self.answers_cache.clear()
            parsed = self.answers_cache[value] = json.loads(value)
        return parsed

    def _votes_of(self, comps) -> dict[int, list[_StoredVote]]:  # noqa: ANN001
        """The votes on ``comps`` by comparison id, in vote order, with their answers by question name."""
        votes: dict[int, list[_StoredVote]] = defaultdict(list)
        main = preferences.primary().name
        for cid, user_id, overall, answers, created in self.conn.execute(
            select(
                Vote.comparison_id,
                Vote.user_id,
                type_coerce(Vote.overall, String),
                self._col(Vote.answers, Text),
                self._col(Vote.created_at, String),
            )
            .where(Vote.comparison_id.in_([c[0] for c in comps]))
            .order_by(Vote.comparison_id, Vote.id)
        ).all():
            votes[cid].append(_StoredVote(user_id, {main: overall, **self._answers(answers)}, created))
        return votes

    def _row(
        self, comp_id: int, a_id: int, b_id: int, kind: Any, vs: list[Any], agg: Aggregate, overall: dict[str, int]
    ) -> tuple:
        """One exported row, in schema order (see _schema); ``overall`` counts the votes per answer."""
        images, data_dir = self.with_images, self.data_dir
        ca, cb = self.candidates[a_id], self.candidates[b_id]
        ga, gb = self.generations[ca.generation_id], self.generations[cb.generation_id]
        return (
            ga.caption,
            _read(data_dir, ca.image_path) if images else None,
            _read(data_dir, cb.image_path) if images else None,
            agg.label_0,
            agg.label_1,
            ca.uid,
            cb.uid,
            ga.model,
            gb.model,
            vs[0].user_id,
            comp_id,
            self._datetime(max(v.created_at for v in vs)),
            agg.has_label,
            ca.uid != cb.uid,
            {"a": ca.uid, "b": cb.uid}.get(agg.outcome, ""),
            ga.task,
            ga.num_subjects,
            ga.reference_uids,
            [_read(data_dir, p) for p in ga.reference_paths] if images else None,
            ga.reference_embeddings,
            ga.face_backend,
            ga.target_ages,
            ga.subject_labels,
            ga.subject_describe_as,
            ga.clip_caption,
            *question_columns([v.answers for v in vs], ga.num_subjects, agg),
            agg.agreement,
            len(vs),
            overall.get("a", 0),
            overall.get("b", 0),
            overall.get("tie", 0),
            overall.get("both_bad", 0),
            [v.user_id for v in vs],
            ca.faces,
            cb.faces,
            ca.metrics,
            cb.metrics,
            kind,
            ga.split,
        )

    def build(self, comps) -> tuple[dict[str, dict[str, list[Any]]], int]:  # noqa: ANN001
        """Columns per split for the labelled comparisons of ``comps``, and the number of ties dropped."""
        self._load_candidates({c[1] for c in comps} | {c[2] for c in comps})
        votes = self._votes_of(comps)
        main = preferences.primary()
        grade = getattr(preferences.grade_of(main), "name", None)
        rows: dict[str, list[tuple]] = defaultdict(list)
        dropped = 0
        for comp_id, a_id, b_id, kind in comps:
            vs = votes.get(comp_id)
            if not vs:
                continue
            agg, overall = _aggregate_counts([v.answers[main.name] for v in vs],
                                             [v.answers.get(grade) for v in vs])
            tie = agg.has_label and agg.label_0 == 0.5
            if self.drop_ties and tie:
                dropped += 1
                continue
            self.votes += len(vs)
            self.ties += tie
            self.both_bad += not agg.has_label
            row = self._row(comp_id, a_id, b_id, kind, vs, agg, overall)
            rows[row[-1]].append(row)  # the last column is the split
        out = {
            split: dict(zip(self.names, map(list, zip(*split_rows)))) for split, split_rows in rows.items()
        }
        self.dropped_ties += dropped
        return out, dropped


def _stored_embeddings(params: dict[str, Any], num_subjects: int) -> tuple[list[list[float]] | None, str | None]:
    """The identity embeddings the app stored with a generation (``params["subject_embeddings"]``, one per
    slot) and their ``face_backend``; (None, None) when absent or incomplete."""
    embeddings = params.get("subject_embeddings")
    if not isinstance(embeddings, list) or len(embeddings) != num_subjects or any(e is None for e in embeddings):
        return None, None
    return [[float(v) for v in e] for e in embeddings], params.get("face_backend")


def _provenance(votes: int, counts: dict[str, int], pages: _PageBuilder, left_out: dict[str, int]) -> str:
    """Markdown lines: votes → comparisons → rows, ties and both-bad rows, and what was left out."""
    rows = sum(counts.values())
    lines = [
        f"- {votes} vote(s) on {rows} comparison(s) give {rows} row(s), one per comparison "
        "(several annotators' votes are aggregated by majority).",
        f"- {pages.ties} row(s) are ties and {pages.both_bad} row(s) are \"both bad\" (`has_label = false`).",
    ]
    lines += [f"- left out: {n} comparison(s), {reason}." for reason, n in left_out.items()]
    return "\n".join(lines)


def _dpo_convention() -> str:
    """The DPO losses the trainer can use on this export (``loss_type``), each with its formula."""
    lines = ["The group-level DPO trainer (`idglow train dpo`) uses the loss named by its `loss_type`:", ""]
    lines += [f"- `{loss.name}`{' (default)' if loss.name == DEFAULT_DPO_LOSS else ''}: {loss.formula}"
              for loss in DPO_LOSSES.values()]
    return "\n".join(lines)


def _card(counts: dict[str, int], params: dict[str, Any], dropped_ties: int, fmt: str, provenance: str = "") -> str:
    configs = "\n".join(f"  - split: {s}\n    path: data/{s}.{fmt}" for s in counts)
    split_lines = "\n".join(f"| {s} | {n} |" for s, n in counts.items()) or "| (none) | 0 |"
    ties = (
        f"dropped ({dropped_ties} tied rows left out)"
        if params["tie_policy"] == "drop"
        else "kept with label_0 = label_1 = 0.5"
    )
    header = f"---\nconfigs:\n- config_name: default\n  data_files:\n{configs}\n---\n" if counts else ""
    return f"""{header}
# IdGlow group preferences

Pairwise human preferences between generated group photos of the same people, one row per comparison,
with the columns of Pick-a-Pic v2 (`caption`, `jpg_0`, `jpg_1`, `label_0`, `label_1`, `image_0_uid`,
`image_1_uid`, `model_0`, `model_1`, `user_id`, `ranking_id`, `created_at`, `has_label`, `are_different`,
`best_image_uid`) plus group columns.

## Counts

| split | rows |
|---|---|
{split_lines}

Splits are assigned by a hash of the subjects (the same people never appear in two splits).

{provenance}

## Labels

- `label_0`/`label_1`: majority of the annotators' overall votes (1/0; ties {ties}).
  A plurality of "both bad" gives `has_label = false` with both labels 0.
- `agreement`: share of votes equal to the aggregated outcome; `num_votes`, `votes_0`, `votes_1`,
  `votes_tie`, `votes_both_bad` give the raw counts and `annotator_ids` who voted (`user_id` is the first).
- `strength`: mean strength of the agreeing votes (slight 0.5, clear 1.0), 0 for ties.
- `identity_labels_0[j]`: preference for image 0 on the identity of person j (slot order): 1, 0, 0.5 for a
  tie, null when nobody judged it. `texture_label_0`, `artifacts_label_0` (1 = image 0 has the better
  texture / fewer artifacts) likewise.
- `faces_0`/`faces_1`: JSON with the per-slot face matches (similarity, bbox, missing, duplicates) and the
  detected faces; `metrics_0`/`metrics_1`: JSON metrics of each image.
- `reference_uids`, `target_ages`, `subject_labels`, `subject_describe_as` (the word chosen to describe each
  person: woman, man, girl, boy, or null when left to the model) (and `reference_images` when exported with images)
  are per person in slot order. `reference_embeddings` holds each person's identity embedding as the app
  computed it, made by the face backend named in `face_backend` (null when the app stored none); the DPO
  trainer uses them instead of detecting the faces again. `clip_caption` is the text the pipeline gave CLIP
  (the prompt writer's compact text; `caption`, the full text, went to T5), so DPO encodes both as generation did. `jpg_0`/`jpg_1` hold PNG bytes when exported with images, else null.

## DPO convention

{_dpo_convention()}

## Export parameters

```json
{json.dumps(params, indent=2, sort_keys=True)}
```

`manifest.json` lists the sha256 of every file.
"""
