"""Make an SFT set from one's own photos: each group photo is a target, and each of its people gets references
from *other* photos of that person when there are some (a folder per person or a manifest, see
:mod:`idglow.training.sft_sources`), averaged into one identity embedding; a person with no other photo falls
back to a crop of the target itself (and its mirror), which is recorded and warned about: the model can learn
to paste that crop back instead of rendering the identity anew. Where a person's references differ in age from
the target photo by more than ``age_gap`` years, an age-transformation row is written as well. Every row's prompt
is written by the inference prompt writer (:class:`idglow.prompting.PromptSynthesizer`: the people left to right
with label, age and place, the target age in age rows), so training sees the prompts generation uses."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ImageOps

from idglow.errors import InputError
from idglow.faces.base import Face, l2_normalize
from idglow.training.files import METADATA
from idglow.training.sft_sources import Appearance, list_photos, load_manifest, person_folders

logger = logging.getLogger(__name__)

SAME_PHOTO, OTHER_PHOTOS = "same_photo", "other_photos"
# Longest side of a stored training image or reference crop, in pixels: twice the default training resolution
# (1024), and small enough that any PNG of it (at most 2048² × 3 bytes, 12 MiB) stays under the trainer's 20 MiB
# file limit (idglow.images.DEFAULT_MAX_BYTES).
MAX_STORED_SIDE = 2048


@dataclass
class BuildReport:
    """What ``build_sft_dataset`` wrote. photos: input photos; kept: target photos written; rows: metadata rows
    (a target with an age pair gives two); age_rows: rows of task ``age``; skipped: photo → why it (or a person
    listed in it) was not used; same_photo: "photo: person" for each subject whose reference is a crop of the
    target itself."""

    photos: int
    kept: int
    skipped: dict[str, str]
    out_dir: str
    rows: int = 0
    age_rows: int = 0
    same_photo: list[str] = field(default_factory=list)
    prompt_writer: str = "template"


@dataclass(eq=False)
class _Photo:
    path: Path
    name: str  # as recorded in the metadata: relative to the input folder or manifest
    key: str  # file stem in the output folder
    size: tuple[int, int]
    faces: list[Face]  # left to right, each with an embedding
    prompt: str | None = None


@dataclass(eq=False)
class _Seen:
    """A person found in a photo: their face, recorded or estimated age and the crop written for it."""

    person: str
    photo: _Photo
    index: int
    age: float | None
    age_source: str | None
    crop: str = ""

    @property
    def face(self) -> Face:
        return self.photo.faces[self.index]


@dataclass
class _Crops:
    """Writes each person's face crop (box grown by ``margin``) once, as ``refs/KEY_INDEX.png``, when a row
    first needs it."""

    out: Path
    margin: float
    max_side: int = MAX_STORED_SIDE

    def __call__(self, s: _Seen) -> str:
        if not s.crop:
            image = _decoded(s.photo.path)
            s.crop = f"refs/{s.photo.key}_{s.index}.png"
            crop = image.crop(_crop_box(s.face.bbox, image.width, image.height, self.margin))
            stored_size(crop, self.max_side).save(self.out / s.crop)
        return s.crop


def stored_size(image, max_side: int = MAX_STORED_SIDE):
    """``image`` scaled down (Lanczos, aspect kept) so that its longest side is at most ``max_side``; an image
    that fits is returned as it is."""
    from PIL import Image

    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


@lru_cache(maxsize=8)
def _decoded(path: Path):
    from idglow.images import decode_image

    return decode_image(path)


@dataclass
class BuildOptions:
    """Knobs of ``build_sft_dataset`` (see there)."""

    min_faces: int = 2
    max_faces: int = 6
    margin: float = 0.4
    caption: str | None = None
    age_gap: float = 10.0
    max_references: int = 4
    match_threshold: float | None = None
    max_side: int = MAX_STORED_SIDE

    def __post_init__(self) -> None:
        if not 1 <= self.min_faces <= self.max_faces:
            raise InputError(f"min_faces={self.min_faces}, max_faces={self.max_faces}: need 1 <= min_faces <= max_faces")
        if self.age_gap < 0:
            raise InputError(f"age_gap={self.age_gap} must be >= 0 years")
        if self.max_references < 1:
            raise InputError(f"max_references={self.max_references} must be >= 1")
        if not 64 <= self.max_side <= MAX_STORED_SIDE:
            raise InputError(f"max_side={self.max_side} must be between 64 and {MAX_STORED_SIDE} pixels (larger "
                             "PNGs can exceed the trainer's file limit)")


def _crop_box(bbox, width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = bbox
    mw, mh = (x2 - x1) * margin, (y2 - y1) * margin
    return (max(0, int(x1 - mw)), max(0, int(y1 - mh)), min(width, int(x2 + mw)), min(height, int(y2 + mh)))


def _embedding(x) -> list[float]:
    return np.asarray(x, dtype=float).round(6).tolist()


def mean_embedding(embeddings) -> np.ndarray:
    """The identity embedding of several references: the mean of their L2-normalised embeddings, normalised."""
    stacked = np.stack([l2_normalize(np.asarray(e, dtype=np.float32)) for e in embeddings])
    return l2_normalize(stacked.mean(axis=0))


def build_sft_dataset(photos_dir: str | Path | None, out_dir: str | Path, face_analyzer, *,
                      manifest: str | Path | None = None, options: BuildOptions | None = None,
                      prompt_writer=None, **knobs: Any) -> BuildReport:
    """Write ``out_dir/metadata.jsonl``, ``images/`` and ``refs/`` from ``photos_dir`` or ``manifest``.

    ``photos_dir`` is a flat folder of group photos (every face its own person) or a folder of per-person
    folders; ``manifest`` a JSON/CSV list of who is in which photo, with optional ages (see
    :mod:`idglow.training.sft_sources`). Photos with ``min_faces``..``max_faces`` known people are targets,
    their people slotted left to right. Each slot records its person, box, age (recorded, else the analyzer's
    estimate) and gender, and its references: up to ``max_references`` crops from other photos of the person
    whose age is within ``age_gap`` years (``reference_source="other_photos"``, ``reference_photos``; the one
    entry of ``embeddings`` is their normalised mean embedding), else the target's own crop and its mirror
    (``reference_source="same_photo"``, logged as a warning). Where some person has photos more than
    ``age_gap`` years from the target, a second row of task ``age`` uses those as references with the target's
    age as ``target_age``. A photo's own text (the manifest's prompt, else ``NAME.txt`` beside it, else
    ``caption``) is its ``scene``; the row's ``prompt`` is written by ``prompt_writer`` (a PromptSynthesizer;
    default: the template one, without a vision-language model) from the people — named people by their name,
    each with their age in the target (the target age in an age row) and gender — and that scene, as at
    inference. ``prompt_source`` ("template" or "vlm") and ``prompt_record`` (the GroupPrompt) record which
    writer made it. Target images and reference crops are stored with their longest side at most ``max_side``
    pixels (default :data:`MAX_STORED_SIDE`), so the trainer accepts every file. ``knobs`` are :class:`BuildOptions`
    fields.
    """
    opts = options or BuildOptions(**knobs)
    out = Path(out_dir)
    appearances, paths, root = _gather(photos_dir, manifest)
    words = _described(appearances or [])
    if out.exists() and any(out.iterdir()):
        raise InputError(f"output folder {out} is not empty")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "refs").mkdir(exist_ok=True)
    report = BuildReport(photos=len(paths), kept=0, skipped={}, out_dir=str(out))
    photos = _detect_photos(paths, root, face_analyzer, report.skipped)
    appearances_named = appearances is not None  # a flat folder names nobody
    if appearances is None:
        appearances = _flat_appearances(photos, opts, report.skipped)
    seen = _resolve(appearances, photos, _threshold(face_analyzer, opts), report.skipped)
    by_person: dict[str, list[_Seen]] = defaultdict(list)
    for s in seen:
        by_person[s.person].append(s)
    rows, crops = [], _Crops(out, opts.margin, opts.max_side)
    for photo in dict.fromkeys(photos.values()):
        people = sorted((s for s in seen if s.photo is photo), key=lambda s: s.index)
        if opts.min_faces <= len(people) <= opts.max_faces:  # others serve as references only
            rows.extend(_target_rows(photo, people, by_person, crops, face_analyzer, opts, report))
            report.kept += 1
    _decoded.cache_clear()
    for subject in (subject for row in rows for subject in row["subjects"]):
        subject["describe_as"] = words.get(subject["person"])
    caption_rows(rows, prompt_writer, out, named=appearances_named)
    report.prompt_writer = "vlm" if getattr(prompt_writer, "vlm", None) is not None else "template"
    (out / METADATA).write_text("".join(json.dumps(r) + "\n" for r in rows))
    report.rows, report.age_rows = len(rows), sum(r["task"] == "age" for r in rows)
    return report


def _described(appearances: list[Appearance]) -> dict[str, str]:
    """Person → how the manifest says to describe them (``describe_as``; absent where it says nothing); a
    person described differently in two entries is refused."""
    words: dict[str, str] = {}
    for a in appearances:
        if a.describe_as and words.setdefault(a.person, a.describe_as) != a.describe_as:
            raise InputError(f"{a.person!r} is described as {words[a.person]!r} and as {a.describe_as!r}; "
                             "give one describe_as per person")
    return words


def _flat_appearances(photos: dict[Path, _Photo], opts: BuildOptions, skipped: dict[str, str]) -> list[Appearance]:
    """A flat folder of group photos: every face of a photo with ``min_faces``..``max_faces`` faces is its own
    person."""
    found = []
    for photo in dict.fromkeys(photos.values()):
        if opts.min_faces <= len(photo.faces) <= opts.max_faces:
            found.extend(Appearance(photo.path, f"{photo.key}#{j}", face=j) for j in range(len(photo.faces)))
        else:
            skipped[photo.name] = f"{len(photo.faces)} faces (need {opts.min_faces}-{opts.max_faces})"
    return found


def _threshold(analyzer, opts: BuildOptions) -> float:
    if opts.match_threshold is not None:
        return opts.match_threshold
    from idglow.faces.match import analyzer_match_threshold

    return analyzer_match_threshold(analyzer)


def _gather(photos_dir, manifest) -> tuple[list[Appearance] | None, list[Path], Path]:
    """(appearances or None for a flat folder, the photo files, the folder names are relative to)."""
    if (photos_dir is None) == (manifest is None):
        raise InputError("give either a photos folder or a manifest (not both)")
    if manifest is not None:
        appearances = load_manifest(manifest)
        return appearances, list(dict.fromkeys(a.photo for a in appearances)), Path(manifest).parent
    src = Path(photos_dir)
    if not src.is_dir():
        raise InputError(f"photos folder {src} does not exist")
    appearances = person_folders(src)
    paths = list(dict.fromkeys(a.photo for a in appearances)) if appearances else list_photos(src)
    if not paths:
        raise InputError(f"no JPEG/PNG/WebP photos in {src} (nor in per-person folders inside it)")
    return (appearances or None), paths, src


def _detect_photos(paths: list[Path], root: Path, analyzer, skipped: dict[str, str]) -> dict[Path, _Photo]:
    """Detect the faces of each photo once; the same file content under two paths is one photo."""
    from idglow.images import decode_image

    photos: dict[Path, _Photo] = {}
    by_hash: dict[str, _Photo] = {}
    stems: set[str] = set()
    for path in paths:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in by_hash:
            photos[path] = by_hash[digest]
            continue
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        try:
            image = decode_image(path)
        except InputError as err:
            skipped[name] = str(err)
            continue
        faces = [f for f in analyzer.detect(np.asarray(image)) if f.embedding is not None]
        faces.sort(key=lambda f: (f.bbox[0] + f.bbox[2]) / 2)
        key = path.stem if path.stem not in stems else f"{path.stem}-{digest[:8]}"
        stems.add(key)
        text = path.with_suffix(".txt")
        prompt = text.read_text().strip() if text.is_file() else None
        photos[path] = by_hash[digest] = _Photo(path, name, key, image.size, faces, prompt or None)
        logger.info("%s: %d faces", name, len(faces))
    return photos


def _resolve(appearances: list[Appearance], photos: dict[Path, _Photo], threshold: float,
             skipped: dict[str, str]) -> list[_Seen]:
    """Find each person's face: the given index; else the largest face when the photo shows one listed
    person; else the face most like the person's other photos (Hungarian assignment, at or above the
    analyzer's same-person ``threshold``)."""
    in_photo: dict[int, list[Appearance]] = defaultdict(list)
    owner: dict[int, _Photo] = {}
    for a in appearances:
        photo = photos.get(a.photo)
        if photo is not None:
            photo.prompt = a.prompt or photo.prompt
            in_photo[id(photo)].append(a)
            owner[id(photo)] = photo
    found: dict[tuple[int, str], int] = {}
    for pid, listed in in_photo.items():
        found.update({(pid, person): j for person, j in _direct_faces(owner[pid], listed, skipped).items()})
    anchors = _anchors(found, owner)
    for pid, listed in in_photo.items():
        open_people = [a.person for a in listed if (pid, a.person) not in found]
        if open_people and owner[pid].faces:
            taken = {j for (p, _), j in found.items() if p == pid}
            for person, index in _match(open_people, owner[pid], taken, anchors, threshold, skipped).items():
                found[pid, person] = index
    ages = {(id(photos[a.photo]), a.person): a.age for a in appearances if a.photo in photos}
    return [_seen(person, owner[pid], index, ages.get((pid, person))) for (pid, person), index in found.items()]


def _direct_faces(photo: _Photo, listed: list[Appearance], skipped: dict[str, str]) -> dict[str, int]:
    """The faces known without matching: given indices, or the largest face of a one-person photo."""
    if not photo.faces:
        skipped.setdefault(photo.name, "no face found")
        return {}
    found = {}
    for a in listed:
        if a.face is not None and a.face >= len(photo.faces):
            skipped.setdefault(photo.name, f"{a.person}: face {a.face} asked, {len(photo.faces)} found")
        elif a.face is not None:
            found[a.person] = a.face
        elif len(listed) == 1:
            found[a.person] = max(range(len(photo.faces)), key=lambda j: photo.faces[j].area)
    return found


def _seen(person: str, photo: _Photo, index: int, recorded_age: float | None) -> _Seen:
    estimate = photo.faces[index].age
    if recorded_age is not None:
        return _Seen(person, photo, index, float(recorded_age), "recorded")
    if estimate is not None:
        return _Seen(person, photo, index, round(float(estimate), 1), "estimated")
    return _Seen(person, photo, index, None, None)


def _anchors(found: dict[tuple[int, str], int], owner: dict[int, _Photo]) -> dict[str, np.ndarray]:
    """Each person's mean embedding over the photos where their face is already known."""
    embeds: dict[str, list] = defaultdict(list)
    for (pid, person), index in found.items():
        embeds[person].append(owner[pid].faces[index].embedding)
    return {person: mean_embedding(e) for person, e in embeds.items()}


def _match(people: list[str], photo: _Photo, taken: set[int], anchors: dict[str, np.ndarray], threshold: float,
           skipped: dict[str, str]) -> dict[str, int]:
    from scipy.optimize import linear_sum_assignment

    unknown = [p for p in people if p not in anchors]
    if unknown:
        skipped.setdefault(photo.name, f"cannot tell which face is {', '.join(unknown)}: give a face index in "
                                       "the manifest or another photo of them")
    free = [j for j in range(len(photo.faces)) if j not in taken]
    people = [p for p in people if p in anchors]
    if not people or not free:
        return {}
    cos = np.array([[float(anchors[p] @ l2_normalize(photo.faces[j].embedding)) for j in free] for p in people])
    result = {}
    for r, c in zip(*linear_sum_assignment(-cos)):
        if cos[r, c] >= threshold:
            result[people[r]] = free[c]
        else:
            skipped.setdefault(photo.name, f"{people[r]}: no face at or above the same-person similarity "
                                           f"{threshold:.2f} (best {cos[r, c]:.2f})")
    left = [p for p in people if p not in result]
    if left:
        skipped.setdefault(photo.name, f"no face found for {', '.join(left)}")
    return result


def _target_rows(photo: _Photo, people: list[_Seen], by_person: dict[str, list[_Seen]], crops: _Crops, analyzer,
                 opts: BuildOptions, report: BuildReport) -> list[dict[str, Any]]:
    """The fusion row of one target photo and, where references of another age exist, its age row."""
    stored = stored_size(_decoded(photo.path), opts.max_side)
    stored.save(crops.out / "images" / f"{photo.key}.png")
    fusion, aged = [], []
    for slot, s in enumerate(people):
        others = [o for o in by_person[s.person] if o.photo is not photo]
        near = [o for o in others if _age_gap(o, s) is None or _age_gap(o, s) <= opts.age_gap]
        far = [o for o in others if o not in near]
        near.sort(key=lambda o: (_age_gap(o, s) or 0.0, o.photo.name))
        if near:
            subject = _other_photo_subject(slot, s, near[: opts.max_references], crops)
        else:
            why = "no other photo" if not others else f"every other photo is over {opts.age_gap:g} years apart in age"
            logger.warning("%s: %s: %s; using a crop of the target itself as the reference (the model may learn "
                           "to copy it)", photo.name, s.person, why)
            report.same_photo.append(f"{photo.name}: {s.person}")
            subject = _same_photo_subject(slot, s, crops, analyzer)
        fusion.append(subject)
        far = _one_side(far, s)
        aged.append({**_other_photo_subject(slot, s, far[: opts.max_references], crops), "target_age": s.age}
                    if far else subject)
    w, h = stored.size
    base = {"image": f"images/{photo.key}.png", "source_photo": photo.name, "width": w, "height": h,
            "scene": photo.prompt or opts.caption or ""}
    rows = [{**base, "task": "fusion", "subjects": fusion}]
    if any(a is not f for a, f in zip(aged, fusion)):
        rows.append({**base, "task": "age", "subjects": aged})
    return rows


def _one_side(far: list[_Seen], s: _Seen) -> list[_Seen]:
    """The photos on the side (younger or older) of the one furthest in age from ``s``, furthest first."""
    far = sorted(far, key=lambda o: (-(_age_gap(o, s) or 0.0), o.photo.name))
    return [o for o in far if (o.age > s.age) == (far[0].age > s.age)] if far else []


def _age_gap(a: _Seen, b: _Seen) -> float | None:
    return None if a.age is None or b.age is None else abs(a.age - b.age)


def _subject(slot: int, s: _Seen) -> dict[str, Any]:
    w, h = s.photo.size
    x1, y1, x2, y2 = s.face.bbox
    return {"slot": slot, "person": s.person, "bbox": [x1 / w, y1 / h, x2 / w, y2 / h],
            "age": None if s.age is None else round(s.age, 1), "age_source": s.age_source,
            "gender": s.face.gender, "target_age": None}


def _other_photo_subject(slot: int, s: _Seen, refs: list[_Seen], crops: _Crops) -> dict[str, Any]:
    embeddings = [r.face.embedding for r in refs]
    ages = [r.age for r in refs if r.age is not None]
    return {**_subject(slot, s), "reference_source": OTHER_PHOTOS, "references": [crops(r) for r in refs],
            "reference_photos": [r.photo.name for r in refs],
            "reference_embeddings": [_embedding(e) for e in embeddings],
            "reference_age": round(float(np.mean(ages)), 1) if ages else None,
            "embeddings": [_embedding(mean_embedding(embeddings))]}


def _same_photo_subject(slot: int, s: _Seen, crops: _Crops, analyzer) -> dict[str, Any]:
    """The target's own crop and its mirror, each with its embedding (the mirror's own when the analyzer finds
    its face, else the original's)."""
    from idglow.images import decode_image

    crop = crops(s)
    flip_ref = crop.replace(".png", "_flip.png")
    flipped = ImageOps.mirror(decode_image(crops.out / crop))
    flipped.save(crops.out / flip_ref)
    flip_faces = [f for f in analyzer.detect(np.asarray(flipped)) if f.embedding is not None]
    flip_embedding = max(flip_faces, key=lambda f: f.area).embedding if flip_faces else s.face.embedding
    return {**_subject(slot, s), "reference_source": SAME_PHOTO, "references": [crop, flip_ref],
            "reference_photos": [s.photo.name, s.photo.name], "reference_age": _subject(slot, s)["age"],
            "embeddings": [_embedding(s.face.embedding), _embedding(flip_embedding)]}


def caption_rows(rows: list[dict[str, Any]], writer, root: Path, *, named: bool = True) -> None:
    """Set each row's ``prompt`` with ``writer`` (a PromptSynthesizer; None: the template writer), the one that
    writes prompts at inference, in one batch: the row's people in slot (left-to-right) order with their label
    (their name when ``named``), age in the target or target age, gender, and the row's ``scene``. The
    references' first crops are the people's photos for a vision-language model. Records ``prompt_source`` and
    ``prompt_record``."""
    from idglow.prompting import Known, PromptRequest, PromptSynthesizer
    from idglow.subjects import SubjectRef

    writer = writer or PromptSynthesizer()
    requests = []
    for row in rows:
        people = row["subjects"]
        subjects = [SubjectRef(image=root / p["references"][0] if p.get("references") else None,
                               target_age=p.get("target_age"), label=p["person"] if named else None,
                               describe_as=p.get("describe_as"))
                    for p in people]
        known = [Known(p.get("age"), p.get("gender"), position) for position, p in enumerate(people, start=1)]
        requests.append(PromptRequest(subjects, row["task"], row.get("scene", ""), known=known))
    for row, prompt in zip(rows, writer.compose_batch(requests)):
        row["prompt"], row["prompt_source"], row["prompt_record"] = prompt.text, prompt.source, prompt.to_dict()
