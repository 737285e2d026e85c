"""Who stands where: binding, confusion and copy-paste on top of the Hungarian identity match.

``match_faces`` pairs faces with people by similarity alone, wherever the faces stand, so a picture with Mum's
face where the prompt puts Dad and Dad's where it puts Mum scores perfectly. Binding asks the question that
matters for a group photo: when the prompt gives each person a place — a left-to-right position (the template
prompt writer's "the second person from the left") or a box (the synthetic world) — is the face in person j's
place person j's?

- *in place*: the face in person j's place resembles person j more than any other member of the group, at or
  above the same-person threshold. ``instead`` names the member whose face stands there otherwise (None for a
  stranger or an empty place), and a group's ``swaps`` counts the people whose place holds another member.
- *confusion* (every face the identity match assigns): similarity to its person minus the best similarity to
  any other member of the group; negative when the face looks more like someone else.
- *copy-paste* (where a ground-truth photo of the scene exists): MultiID-Bench's M_CP =
  (θ(g, t) − θ(g, r)) / max(θ(t, r), ε) with θ the angle between embeddings, g the generated face, r the
  reference and t the same person in the ground truth: +1 pastes the reference, −1 reproduces the ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from idglow.faces.base import Face, FaceMatch
from idglow.faces.match import match_faces, same_person_threshold

#: Least IoU between a face and a person's prompted box for the face to stand in that person's place.
PLACE_MIN_IOU = 0.25
_ANGLE_EPS = 1e-6


def _unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    return x / max(float(np.linalg.norm(x)), 1e-12)


def similarity_matrix(faces: Sequence[Face], references: Sequence[np.ndarray]) -> np.ndarray:
    """Cosine similarity (faces, people) of every face's embedding to every reference; a face without an
    embedding has a row of NaN."""
    out = np.full((len(faces), len(references)), np.nan)
    refs = [_unit(r) for r in references]
    for i, face in enumerate(faces):
        if face.embedding is not None:
            e = _unit(face.embedding)
            out[i] = [float(e @ r) for r in refs]
    return out


def box_iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes (0 when either is empty)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def places_by_order(faces: Sequence[Face], positions: Sequence[int]) -> list[int | None] | None:
    """The face standing in each person's place when the prompt orders the people left to right.

    ``positions[j]`` is person j's place, 1 = leftmost (``PersonDescription.position``). The group's faces are
    the ``len(positions)`` largest faces, read left to right by the centre of their boxes; person j's face is
    the one at rank ``positions[j]``. Returns None when fewer faces than people were found (who is missing,
    and so who stands where, is then ambiguous)."""
    n = len(positions)
    if sorted(positions) != list(range(1, n + 1)):
        raise ValueError(f"positions {list(positions)} must be 1..{n}, each once")
    if len(faces) < n:
        return None
    largest = sorted(range(len(faces)), key=lambda i: faces[i].area, reverse=True)[:n]
    by_x = sorted(largest, key=lambda i: (faces[i].bbox[0] + faces[i].bbox[2]) / 2)
    return [by_x[p - 1] for p in positions]


def places_by_boxes(faces: Sequence[Face], boxes: Sequence[Sequence[float]],
                    min_iou: float = PLACE_MIN_IOU) -> list[int | None]:
    """The face standing in each person's prompted box: a one-to-one assignment of faces to boxes that
    maximises the total IoU (Hungarian), keeping pairs with IoU ≥ ``min_iou``; None for an empty place."""
    out: list[int | None] = [None] * len(boxes)
    if not faces or not boxes:
        return out
    iou = np.array([[box_iou(f.bbox, b) for b in boxes] for f in faces])
    for r, c in zip(*linear_sum_assignment(-iou)):
        if iou[r, c] >= min_iou:
            out[int(c)] = int(r)
    return out


def place_verdict(row: np.ndarray | None, person: int, min_similarity: float) -> tuple[bool, int | None]:
    """(in_place, instead) for the face in person ``person``'s place, given its similarities ``row`` to every
    member of the group (None: the place is empty). The face is the member it resembles most, when that
    similarity reaches ``min_similarity``; otherwise it is a stranger (instead None)."""
    if row is None or np.isnan(row).all():
        return False, None
    best = int(np.nanargmax(row))
    if row[best] < min_similarity:
        return False, None
    return best == person, None if best == person else best


def identity_confusion(row: np.ndarray, person: int) -> float | None:
    """Similarity of a face to its person minus its best similarity to any other member of the group (None
    for a group of one)."""
    others = np.delete(row, person)
    return None if others.size == 0 else float(row[person] - np.max(others))


def copy_paste(sim_generated_reference: float, sim_generated_truth: float, sim_truth_reference: float) -> float:
    """MultiID-Bench's copy-paste score (θ(g, t) − θ(g, r)) / max(θ(t, r), ε) from three cosine similarities,
    θ = arccos: +1 when the generated face is the reference, −1 when it is the ground truth, in [−1, 1]."""
    def angle(c: float) -> float:
        return math.acos(min(max(float(c), -1.0), 1.0))

    value = (angle(sim_generated_truth) - angle(sim_generated_reference)) / max(angle(sim_truth_reference),
                                                                               _ANGLE_EPS)
    return float(min(max(value, -1.0), 1.0))


def _box(b) -> tuple[float, float, float, float] | None:
    return None if b is None else tuple(float(v) for v in b)  # type: ignore[return-value]


def _rounded(values: Sequence[float | None], digits: int = 4) -> list[float | None]:
    return [None if v is None else round(float(v), digits) for v in values]


@dataclass
class GroupBinding:
    """How a generated group binds faces to people, in slot order.

    match: the Hungarian identity match (``match_faces``). places: how the prompt placed people (``"order"``,
    ``"boxes"``) or None. place_face[j]: index of the face in person j's place (None: empty, or no places).
    place_bboxes[j] / place_similarity[j]: that face's box and its similarity to person j. in_place[j]: the face
    in j's place is j's (None when the prompt gives no places or they cannot be read). instead[j]: the member
    whose face stands in j's place instead. confusion[j]: see ``identity_confusion`` (j's matched face).
    copy_paste[j]: see ``copy_paste`` (j's matched face, where a ground truth of j exists). swaps: people whose
    place holds another member's face (None without places).
    """

    match: FaceMatch
    places: str | None = None
    place_face: list[int | None] = field(default_factory=list)
    place_bboxes: list[tuple[float, float, float, float] | None] = field(default_factory=list)
    place_similarity: list[float | None] = field(default_factory=list)
    in_place: list[bool | None] = field(default_factory=list)
    instead: list[int | None] = field(default_factory=list)
    confusion: list[float | None] = field(default_factory=list)
    copy_paste: list[float | None] = field(default_factory=list)
    swaps: int | None = None

    @property
    def binding_accuracy(self) -> float | None:
        """Fraction of people whose place holds their own face (None when no place could be judged)."""
        known = [v for v in self.in_place if v is not None]
        return float(np.mean(known)) if known else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (``from_dict`` reads it back)."""
        return {
            "match": self.match.to_dict(), "places": self.places, "place_face": list(self.place_face),
            "place_bboxes": [None if b is None else [round(v, 2) for v in b] for b in self.place_bboxes],
            "place_similarity": _rounded(self.place_similarity), "in_place": list(self.in_place),
            "instead": list(self.instead), "confusion": _rounded(self.confusion),
            "copy_paste": _rounded(self.copy_paste), "swaps": self.swaps,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupBinding:
        """The binding recorded by ``to_dict``."""
        return cls(
            match=FaceMatch.from_dict(data["match"]), places=data.get("places"),
            place_face=list(data.get("place_face", [])),
            place_bboxes=[_box(b) for b in data.get("place_bboxes", [])],
            place_similarity=list(data.get("place_similarity", [])), in_place=list(data.get("in_place", [])),
            instead=list(data.get("instead", [])), confusion=list(data.get("confusion", [])),
            copy_paste=list(data.get("copy_paste", [])), swaps=data.get("swaps"),
        )


def _place_faces(faces, positions, boxes, min_iou) -> tuple[str | None, list[int | None] | None]:
    if positions is not None and boxes is not None:
        raise ValueError("give the people's places as positions or as boxes, not both")
    if positions is not None:
        return "order", places_by_order(faces, positions)
    if boxes is not None:
        return "boxes", places_by_boxes(faces, boxes, min_iou)
    return None, None


def bind_group(faces: Sequence[Face], references: Sequence[np.ndarray], *, positions: Sequence[int] | None = None,
               boxes: Sequence[Sequence[float]] | None = None, truth: Sequence[np.ndarray | None] | None = None,
               min_similarity: float | None = None, duplicate_similarity: float | None = None,
               min_iou: float = PLACE_MIN_IOU) -> GroupBinding:
    """Bind the faces found in a generated image to the group's people (reference embeddings, slot order).

    ``positions`` (1 = leftmost, per person) or ``boxes`` (per person, in the image's pixels) give the places
    the prompt puts people in; ``truth`` the embedding of each person in a ground-truth photo of the scene
    (None where unknown). ``min_similarity`` defaults to the backend's same-person threshold; it gates both the
    Hungarian match and whom a face in a place is taken for; ``duplicate_similarity`` is ``match_faces``'."""
    n = len(references)
    if min_similarity is None and n:
        min_similarity = same_person_threshold(_unit(references[0]).size)
    match = match_faces(faces, references, min_similarity=min_similarity, duplicate_similarity=duplicate_similarity)
    sims = similarity_matrix(faces, references)
    places, place_face = _place_faces(faces, positions, boxes, min_iou)
    binding = GroupBinding(match=match, places=places, place_face=list(place_face or [None] * n))
    for j in range(n):
        face = binding.place_face[j]
        row = None if face is None else sims[face]
        ok, other = place_verdict(row, j, float(min_similarity or 0.0))
        binding.in_place.append(None if place_face is None else ok)
        binding.instead.append(other)
        binding.place_bboxes.append(None if face is None else _box(faces[face].bbox))
        binding.place_similarity.append(None if row is None or np.isnan(row[j]) else float(row[j]))
        matched = match.face_of_slot[j]
        binding.confusion.append(None if matched is None else identity_confusion(sims[matched], j))
        binding.copy_paste.append(_copy_paste_of(faces, matched, references[j], None if truth is None else truth[j]))
    if place_face is not None:
        binding.swaps = sum(1 for other in binding.instead if other is not None)
    return binding


def _copy_paste_of(faces, matched: int | None, reference, truth) -> float | None:
    if matched is None or truth is None or faces[matched].embedding is None:
        return None
    g, r, t = _unit(faces[matched].embedding), _unit(reference), _unit(truth)
    return copy_paste(float(g @ r), float(g @ t), float(t @ r))
