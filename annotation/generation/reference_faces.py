"""The people of an uploaded photo: faces found on a bounded-size copy, each cut out as a square crop.

One photo is checked at a time, so a bad photo (no face, unreadable) is reported on its own while the good
ones are kept. A photo with several faces gives its largest face, unless it is the visitor's only photo
(a group photo): then every face becomes a person, from left to right.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from PIL import Image

from idglow.errors import InputError, NoFaceError
from idglow.faces.base import Face, sort_largest_first
from idglow.samples import crop_box
from idglow.subjects import MAX_SUBJECTS

logger = logging.getLogger(__name__)

CROP_SIZE = 256
DETECT_MAX_SIDE = 2048


@dataclass
class DetectedSubject:
    """A person found in an upload: ``crop`` (a face-centred square, the stored reference), the index of
    that person's face among the crop's faces (largest first) and the photo's upload name."""

    crop: Any
    face_index: int
    source: str


def detect_bounded(analyzer, image: Image.Image, max_side: int = DETECT_MAX_SIDE) -> list[Face]:
    """Faces of ``image`` found on a copy whose longest side is at most ``max_side``; boxes are given in
    ``image``'s coordinates (the detector's cost and memory stay bounded whatever the photo's size)."""
    scale = min(1.0, max_side / max(image.size))
    if scale >= 1.0:
        return analyzer.detect(image)
    small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.BILINEAR)
    faces = analyzer.detect(small)
    for face in faces:
        face.bbox = tuple(float(v) / scale for v in face.bbox)
        if face.kps is not None:
            face.kps = face.kps / scale
    return faces


def _center_face(faces: list[Face], size: tuple[int, int]) -> int:
    cx, cy = size[0] / 2, size[1] / 2

    def dist(face: Face) -> float:
        x1, y1, x2, y2 = face.bbox
        return ((x1 + x2) / 2 - cx) ** 2 + ((y1 + y2) / 2 - cy) ** 2

    return min(range(len(faces)), key=lambda i: dist(faces[i]))


def _subject(analyzer, name: str, image: Image.Image, face: Face, crop_size: int) -> DetectedSubject:
    crop = image.crop(crop_box(face.bbox, *image.size)).resize((crop_size, crop_size), Image.Resampling.LANCZOS)
    crop_faces = sort_largest_first(analyzer.detect(crop))
    if not crop_faces:  # the crop lost the face (tiny face at the border): keep the whole photo
        return DetectedSubject(image, 0, name)
    return DetectedSubject(crop, _center_face(crop_faces, crop.size), name)


def people_in_photo(analyzer, name: str, image: Image.Image, *, group: bool = False,
                    crop_size: int = CROP_SIZE) -> list[DetectedSubject]:
    """The people of one photo: its largest face, or with ``group`` every face from left to right.

    Raises ``NoFaceError`` (naming the photo) when no face is found, ``InputError`` for a group photo with
    more than :data:`MAX_SUBJECTS` faces.
    """
    faces = sort_largest_first(detect_bounded(analyzer, image))
    if not faces:
        raise NoFaceError(0, name)
    if not group or len(faces) == 1:
        return [_subject(analyzer, name, image, faces[0], crop_size)]
    if len(faces) > MAX_SUBJECTS:
        raise InputError(f"{name}: {len(faces)} faces found; at most {MAX_SUBJECTS} people are supported")
    return [_subject(analyzer, name, image, f, crop_size) for f in sorted(faces, key=lambda f: f.bbox[0])]


def no_face_message(name: str) -> str:
    """What a visitor reads when a photo has no face."""
    return f"{name}: no face found; use a photo where the face is clearly visible"
