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
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from annotation.storage import image_file
from annotation.users import get_user, require_role
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
    Strength,
    Vote,
)
from idglow.errors import InputError

logger = logging.getLogger(__name__)

SPLITS = (("train", 0.90), ("validation", 0.95), ("test", 1.0))
STRENGTH_VALUE = {Strength.slight: 0.5, Strength.clear: 1.0, None: 1.0}
PAIRWISE_LABEL = {"a": 1.0, "b": 0.0, "tie": 0.5}
DPO_BETA_CONVENTION = (
    "L = -log sigmoid(-beta * Delta - m) with Delta = [e_theta(w) - e_ref(w)] - [e_theta(l) - e_ref(l)] "
    "(mean squared velocity errors), margin m = gamma * strength; no 1/2 factor in front of beta."
)


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
            ("target_ages", pa.list_(pa.float64())),
            ("subject_labels", pa.list_(pa.string())),
            ("identity_labels_0", pa.list_(pa.float64())),
            ("texture_label_0", pa.float64()),
            ("artifacts_label_0", pa.float64()),
            ("strength", pa.float64()),
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


def split_for(subjects_key: str) -> str:
    """Stable split of a group of people: everything about the same subjects lands in the same split."""
    frac = int(hashlib.sha256(f"split:{subjects_key}".encode()).hexdigest()[:12], 16) / 16**12
    return next(name for name, upper in SPLITS if frac < upper)


def _majority(values: list[str]) -> str | None:
    if not values:
        return None
    counts = Counter(values)
    top = max(counts.values())
    winners = sorted(k for k, v in counts.items() if v == top)
    return winners[0] if len(winners) == 1 else "tie"


@dataclass(frozen=True)
class Aggregate:
    label_0: float
    label_1: float
    has_label: bool
    outcome: str  # a | b | tie | both_bad
    agreement: float
    strength: float


def aggregate_overall(votes: list[tuple[Overall, Strength | None]]) -> Aggregate:
    """Majority label of a comparison's overall votes (candidate A is image 0).

    The most frequent answer wins; a draw between a and b (or with tie) is a tie (0.5/0.5); a plurality of
    both_bad gives ``has_label=False``. agreement: share of votes equal to the outcome. strength: mean
    strength (slight 0.5, clear 1.0) of the votes that agree, 0 for ties and unlabelled rows.
    """
    counts = Counter(v.value for v, _ in votes)
    n = sum(counts.values())
    top = max(counts.values())
    winners = sorted(k for k, v in counts.items() if v == top)
    if winners == ["both_bad"]:
        outcome = "both_bad"
    elif len(winners) == 1:
        outcome = winners[0]
    else:
        outcome = "tie"
    agreeing = [s for v, s in votes if v.value == outcome]
    agreement = len(agreeing) / n if agreeing else top / n
    if outcome == "a":
        return Aggregate(
            1.0, 0.0, True, outcome, agreement, sum(STRENGTH_VALUE[s] for s in agreeing) / len(agreeing)
        )
    if outcome == "b":
        return Aggregate(
            0.0, 1.0, True, outcome, agreement, sum(STRENGTH_VALUE[s] for s in agreeing) / len(agreeing)
        )
    if outcome == "tie":
        return Aggregate(0.5, 0.5, True, outcome, agreement, 0.0)
    return Aggregate(0.0, 0.0, False, outcome, agreement, 0.0)


class _ParquetSink:
    def __init__(self, path: Path, schema):
        import pyarrow.parquet as pq

        self.path = path
        self.schema = schema
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")

    def write(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        self.writer.write_table(pa.Table.from_pylist(rows, schema=self.schema))

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

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.fh.write(
                json.dumps({k: self._value(v) for k, v in row.items()}, separators=(",", ":")) + "\n"
            )

    def close(self) -> None:
        self.fh.close()


@dataclass
class ExportResult:
    out_dir: Path
    rows: int
    rows_per_split: dict[str, int]
    dropped_ties: int
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read(data_dir: Path | None, rel: str | None) -> bytes | None:
    if rel is None or data_dir is None:
        return None
    path = image_file(data_dir, rel)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"image file {path} is missing from the data dir") from None


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
    """
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
    if requested_by is not None:
        require_role(get_user(session, requested_by), Role.researcher, "export preferences")
        session.commit()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"export folder {out} is not empty")
    page_size = page_size or (64 if with_images else 2000)
    data_path = Path(data_dir) if data_dir is not None else None

    read_only(session)
    where = [Comparison.is_gold.is_(False), Comparison.vote_count >= min_votes]
    if since is not None:
        where.append(Comparison.last_vote_at >= since)
    total = int(session.scalar(select(func.count()).select_from(Comparison).where(*where)) or 0)

    schema = _schema()
    (out / "data").mkdir(parents=True, exist_ok=True)
    sinks: dict[str, Any] = {}
    rows_per_split: Counter[str] = Counter()
    dropped_ties = 0
    done = 0
    last_id = 0
    sink_cls = _ParquetSink if format == "parquet" else _JsonlSink
    try:
        while True:
            comps = session.execute(
                select(Comparison.id, Comparison.candidate_a_id, Comparison.candidate_b_id, Comparison.kind)
                .where(*where, Comparison.id > last_id)
                .order_by(Comparison.id)
                .limit(page_size)
            ).all()
            if not comps:
                break
            last_id = comps[-1][0]
            rows = _page_rows(session, comps, data_path, with_images)
            by_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for row in rows:
                if tie_policy == "drop" and row["has_label"] and row["label_0"] == 0.5:
                    dropped_ties += 1
                    continue
                by_split[row["split"]].append(row)
            for split in sorted(by_split):
                if split not in sinks:
                    sinks[split] = sink_cls(out / "data" / f"{split}.{format}", schema)
                sinks[split].write(by_split[split])
                rows_per_split[split] += len(by_split[split])
            done += len(comps)
            if progress is not None:
                progress(done, total)
    finally:
        for sink in sinks.values():
            sink.close()
        session.commit()

    params = {
        "format": format,
        "with_images": with_images,
        "tie_policy": tie_policy,
        "min_votes": min_votes,
        "since": since.isoformat() if since else None,
    }
    counts = {s: rows_per_split[s] for s, _ in SPLITS if rows_per_split[s]}
    (out / "README.md").write_text(_card(counts, params, dropped_ties, format), encoding="utf-8")
    files = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        files[path.relative_to(out).as_posix()] = _sha256(path)
    manifest = {"rows": sum(counts.values()), "rows_per_split": counts, "params": params, "files": files}
    manifest_path = out / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    session.add(
        Export(
            user_id=requested_by,
            out_dir=str(out.resolve()),
            format=format,
            num_rows=manifest["rows"],
            params=params,
            manifest_sha256=_sha256(manifest_path),
        )
    )
    session.commit()
    logger.info("exported %d rows to %s", manifest["rows"], out)
    return ExportResult(out, manifest["rows"], counts, dropped_ties, files)


def _page_rows(session: Session, comps, data_dir: Path | None, with_images: bool) -> list[dict[str, Any]]:
    comp_ids = [c[0] for c in comps]
    cand_ids = sorted({c[1] for c in comps} | {c[2] for c in comps})
    cands = {
        r.id: r
        for r in session.execute(
            select(
                Candidate.id,
                Candidate.generation_id,
                Candidate.image_sha256,
                Candidate.image_path,
                Candidate.faces,
                Candidate.face_matches,
                Candidate.metrics,
            ).where(Candidate.id.in_(cand_ids))
        )
    }
    gen_ids = sorted({c.generation_id for c in cands.values()})
    gens = {
        r.id: r
        for r in session.execute(
            select(
                Generation.id,
                Generation.task,
                Generation.final_prompt,
                Generation.num_subjects,
                Generation.subjects_key,
                ModelVersion.name.label("model"),
            )
            .join(ModelVersion, ModelVersion.id == Generation.model_version_id)
            .where(Generation.id.in_(gen_ids))
        )
    }
    subjects: dict[int, list[Any]] = defaultdict(list)
    for r in session.execute(
        select(
            GenerationSubject.generation_id,
            GenerationSubject.slot,
            GenerationSubject.target_age,
            GenerationSubject.label,
            ReferencePhoto.sha256,
            ReferencePhoto.path,
        )
        .outerjoin(ReferencePhoto, ReferencePhoto.id == GenerationSubject.reference_photo_id)
        .where(GenerationSubject.generation_id.in_(gen_ids))
        .order_by(GenerationSubject.generation_id, GenerationSubject.slot)
    ):
        subjects[r.generation_id].append(r)
    votes: dict[int, list[Any]] = defaultdict(list)
    for r in session.execute(
        select(
            Vote.comparison_id,
            Vote.user_id,
            Vote.overall,
            Vote.strength,
            Vote.identity,
            Vote.texture,
            Vote.artifacts,
            Vote.created_at,
        )
        .where(Vote.comparison_id.in_(comp_ids))
        .order_by(Vote.comparison_id, Vote.id)
    ):
        votes[r.comparison_id].append(r)

    rows = []
    for comp_id, a_id, b_id, kind in comps:
        vs = votes.get(comp_id)
        if not vs:
            continue
        ca, cb = cands[a_id], cands[b_id]
        ga, gb = gens[ca.generation_id], gens[cb.generation_id]
        agg = aggregate_overall([(v.overall, v.strength) for v in vs])
        subj = subjects[ga.id]
        identity = []
        for slot in range(ga.num_subjects):
            choices = [v.identity[str(slot)] for v in vs if v.identity and str(slot) in v.identity]
            m = _majority(choices)
            identity.append(None if m is None else PAIRWISE_LABEL[m])
        texture = _majority([v.texture.value for v in vs if v.texture is not None])
        artifacts = _majority([v.artifacts.value for v in vs if v.artifacts is not None])
        overall = Counter(v.overall.value for v in vs)
        best = {"a": ca.image_sha256, "b": cb.image_sha256}.get(agg.outcome, "")
        rows.append(
            {
                "caption": ga.final_prompt,
                "jpg_0": _read(data_dir, ca.image_path) if with_images else None,
                "jpg_1": _read(data_dir, cb.image_path) if with_images else None,
                "label_0": agg.label_0,
                "label_1": agg.label_1,
                "image_0_uid": ca.image_sha256,
                "image_1_uid": cb.image_sha256,
                "model_0": ga.model,
                "model_1": gb.model,
                "user_id": vs[0].user_id,
                "ranking_id": comp_id,
                "created_at": max(v.created_at for v in vs),
                "has_label": agg.has_label,
                "are_different": ca.image_sha256 != cb.image_sha256,
                "best_image_uid": best,
                "task": ga.task.value,
                "num_subjects": ga.num_subjects,
                "reference_uids": [s.sha256 for s in subj],
                "reference_images": [_read(data_dir, s.path) for s in subj] if with_images else None,
                "target_ages": [s.target_age for s in subj],
                "subject_labels": [s.label for s in subj],
                "identity_labels_0": identity,
                "texture_label_0": None if texture is None else PAIRWISE_LABEL[texture],
                "artifacts_label_0": None if artifacts is None else PAIRWISE_LABEL[artifacts],
                "strength": agg.strength,
                "agreement": agg.agreement,
                "num_votes": len(vs),
                "votes_0": overall.get("a", 0),
                "votes_1": overall.get("b", 0),
                "votes_tie": overall.get("tie", 0),
                "votes_both_bad": overall.get("both_bad", 0),
                "annotator_ids": [v.user_id for v in vs],
                "faces_0": json.dumps({"matches": ca.face_matches, "faces": ca.faces}, sort_keys=True),
                "faces_1": json.dumps({"matches": cb.face_matches, "faces": cb.faces}, sort_keys=True),
                "metrics_0": json.dumps(ca.metrics, sort_keys=True),
                "metrics_1": json.dumps(cb.metrics, sort_keys=True),
                "comparison_kind": kind.value,
                "split": split_for(ga.subjects_key),
            }
        )
    return rows


def _card(counts: dict[str, int], params: dict[str, Any], dropped_ties: int, fmt: str) -> str:
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
- `reference_uids`, `target_ages`, `subject_labels` (and `reference_images` when exported with images)
  are per person in slot order. `jpg_0`/`jpg_1` hold PNG bytes when exported with images, else null.

## DPO convention

The group-level DPO trainer uses {DPO_BETA_CONVENTION}

## Export parameters

```json
{json.dumps(params, indent=2, sort_keys=True)}
```

`manifest.json` lists the sha256 of every file.
"""
