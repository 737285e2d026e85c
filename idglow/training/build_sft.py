"""Make a fusion SFT set from one's own group photos: detect the faces of each photo and use them as the
per-slot references (same-photo crops plus mirrored copies), so the model learns to put each person back."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ImageOps

from idglow.errors import InputError
from idglow.training.files import METADATA

logger = logging.getLogger(__name__)

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class BuildReport:
    photos: int
    kept: int
    skipped: dict[str, str]
    out_dir: str


def _crop_box(bbox, width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = bbox
    mw, mh = (x2 - x1) * margin, (y2 - y1) * margin
    return (max(0, int(x1 - mw)), max(0, int(y1 - mh)), min(width, int(x2 + mw)), min(height, int(y2 + mh)))


def build_sft_dataset(photos_dir: str | Path, out_dir: str | Path, face_analyzer, *, min_faces: int = 2,
                      max_faces: int = 6, margin: float = 0.4, caption: str | None = None) -> BuildReport:
    """Write ``out_dir/metadata.jsonl``, ``images/`` and ``refs/`` from the photos in ``photos_dir``.

    Faces are slotted left to right; each slot records the face analyzer's age and gender estimates
    (``age``, ``gender``; None when the backend gives none). Each slot gets two references: the crop of its face (box grown by
    ``margin``) and the mirrored crop, each with its embedding (the mirror's own embedding when the analyzer
    finds its face, else the original's). A photo's prompt is the text of ``NAME.txt`` beside it, else
    ``caption``, else "a group photo of N people". Photos with fewer than ``min_faces`` or more than
    ``max_faces`` faces are skipped (and reported).
    """
    from idglow.images import decode_image

    src, out = Path(photos_dir), Path(out_dir)
    if not src.is_dir():
        raise InputError(f"photos folder {src} does not exist")
    photos = sorted(p for p in src.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        raise InputError(f"no JPEG/PNG/WebP photos in {src}")
    if out.exists() and any(out.iterdir()):
        raise InputError(f"output folder {out} is not empty")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "refs").mkdir(exist_ok=True)
    skipped: dict[str, str] = {}
    rows = []
    for photo in photos:
        try:
            image = decode_image(photo)
        except InputError as err:
            skipped[photo.name] = str(err)
            continue
        faces = [f for f in face_analyzer.detect(np.asarray(image)) if f.embedding is not None]
        if not min_faces <= len(faces) <= max_faces:
            skipped[photo.name] = f"{len(faces)} faces (need {min_faces}-{max_faces})"
            continue
        faces.sort(key=lambda f: (f.bbox[0] + f.bbox[2]) / 2)
        stem = photo.stem
        image.save(out / "images" / f"{stem}.png")
        subjects = []
        for j, face in enumerate(faces):
            crop = image.crop(_crop_box(face.bbox, image.width, image.height, margin))
            flipped = ImageOps.mirror(crop)
            ref, ref_flip = f"refs/{stem}_{j}.png", f"refs/{stem}_{j}_flip.png"
            crop.save(out / ref)
            flipped.save(out / ref_flip)
            flip_faces = [f for f in face_analyzer.detect(np.asarray(flipped)) if f.embedding is not None]
            flip_embedding = max(flip_faces, key=lambda f: f.area).embedding if flip_faces else face.embedding
            w, h = image.size
            subjects.append({
                "slot": j,
                "bbox": [face.bbox[0] / w, face.bbox[1] / h, face.bbox[2] / w, face.bbox[3] / h],
                "references": [ref, ref_flip],
                "embeddings": [np.asarray(face.embedding, dtype=float).round(6).tolist(),
                               np.asarray(flip_embedding, dtype=float).round(6).tolist()],
                "age": None if face.age is None else round(float(face.age), 1),
                "gender": face.gender,
                "target_age": None,
            })
        text_file = photo.with_suffix(".txt")
        prompt = (text_file.read_text().strip() if text_file.is_file() else None) or caption or \
            f"a group photo of {len(faces)} people"
        rows.append({"image": f"images/{stem}.png", "width": image.width, "height": image.height,
                     "prompt": prompt, "task": "fusion", "subjects": subjects})
        logger.info("%s: %d faces", photo.name, len(faces))
    (out / METADATA).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return BuildReport(photos=len(photos), kept=len(rows), skipped=skipped, out_dir=str(out))
