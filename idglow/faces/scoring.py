"""The one scorer of a generated group photo: ``score_group`` finds the faces, binds them to the people
(``idglow.faces.binding``) and ``group_report`` turns the result into the JSON that ``idglow score`` prints and
that eval, the app and the DPO data builder read."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from idglow.faces.base import FaceAnalyzer, sort_largest_first
from idglow.faces.binding import GroupBinding, bind_group
from idglow.faces.match import analyzer_match_threshold, match_faces


def reference_embedding(analyzer: FaceAnalyzer, photo: Any, *, face_index: int | None = None,
                        slot: int = 0) -> np.ndarray:
    """The identity embedding of a person's reference photo: its largest face, or face ``face_index`` (by
    size). Raises NoFaceError naming ``slot`` when the photo has no face."""
    from idglow.errors import NoFaceError
    from idglow.images import to_rgb_array

    faces = [f for f in sort_largest_first(analyzer.detect(to_rgb_array(photo))) if f.embedding is not None]
    if not faces:
        raise NoFaceError(slot, photo if isinstance(photo, str) else None)
    index = face_index or 0
    if not 0 <= index < len(faces):
        raise ValueError(f"subject {slot + 1}: face_index={index}, but the photo has {len(faces)} face(s)")
    return np.asarray(faces[index].embedding, dtype=np.float32)


def truth_embeddings(analyzer: FaceAnalyzer, photo: Any, references: Sequence[np.ndarray],
                     min_similarity: float | None = None) -> list[np.ndarray | None]:
    """Each person's face in a ground-truth photo of the scene (Hungarian match to the references at the
    same-person threshold); None for a person not found there."""
    from idglow.images import to_rgb_array

    faces = analyzer.detect(to_rgb_array(photo))
    match = match_faces(faces, references, min_similarity=min_similarity)
    return [None if i is None else np.asarray(faces[i].embedding, dtype=np.float32) for i in match.face_of_slot]


def score_group(image: Any, references: Sequence[np.ndarray], analyzer: FaceAnalyzer, *,
                positions: Sequence[int] | None = None, boxes: Sequence[Sequence[float]] | None = None,
                ground_truth: Any = None, min_similarity: float | None = None) -> GroupBinding:
    """Score a generated group photo against its people.

    Args:
        image: the generated picture (PIL image, path or uint8 RGB array).
        references: each person's identity embedding, slot order (``reference_embedding``).
        analyzer: the face analyzer that made ``references``.
        positions: each person's place left to right, 1 = leftmost (``GroupPrompt.persons[j].position``, or
            ``prompt_positions``); ``boxes``: each person's box in the image's pixels instead.
        ground_truth: a real photo of the same scene, for copy-paste.
        min_similarity: the same-person threshold (default: the analyzer's).
    """
    from idglow.images import to_rgb_array

    threshold = analyzer_match_threshold(analyzer) if min_similarity is None else float(min_similarity)
    truth = None if ground_truth is None else truth_embeddings(analyzer, ground_truth, references, threshold)
    faces = analyzer.detect(to_rgb_array(image))
    return bind_group(faces, references, positions=positions, boxes=boxes, truth=truth, min_similarity=threshold)


def _who(slot: int | None, labels: Sequence[str]) -> str | None:
    return None if slot is None else labels[slot]


def person_report(binding: GroupBinding, slot: int, label: str, labels: Sequence[str],
                  target_age: float | None) -> dict[str, Any]:
    """One person's record: matched face box and similarity, binding, confusion, copy-paste and age."""
    m = binding.match
    age = m.ages[slot] if slot < len(m.ages) else None
    bbox = m.bboxes[slot]
    return {
        "slot": slot, "label": label,
        "bbox": None if bbox is None else [round(float(v), 1) for v in bbox],
        "similarity": round(float(m.similarity[slot]), 4),
        "in_place": binding.in_place[slot], "instead": _who(binding.instead[slot], labels),
        "place_bbox": None if binding.place_bboxes[slot] is None else [round(v, 1) for v in binding.place_bboxes[slot]],
        "place_similarity": _round(binding.place_similarity[slot]),
        "confusion": _round(binding.confusion[slot]), "copy_paste": _round(binding.copy_paste[slot]),
        "age": None if age is None else round(float(age), 1), "target_age": target_age,
        "age_error": None if age is None or target_age is None else round(abs(float(age) - target_age), 1),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def group_report(binding: GroupBinding, labels: Sequence[str] | None = None,
                 target_ages: Sequence[float | None] | None = None) -> dict[str, Any]:
    """The JSON of ``idglow score``: per person (``person_report``) and for the group: ``swaps``,
    ``binding_accuracy``, mean Hungarian similarity, missing people and extra faces."""
    n = len(binding.match.similarity)
    labels = list(labels) if labels else [f"person {j + 1}" for j in range(n)]
    ages = list(target_ages) if target_ages else [None] * n
    if len(labels) != n or len(ages) != n:
        raise ValueError(f"{len(labels)} labels and {len(ages)} target ages for {n} people")
    accuracy = binding.binding_accuracy
    return {
        "people": [person_report(binding, j, labels[j], labels, ages[j]) for j in range(n)],
        "places": binding.places, "swaps": binding.swaps,
        "binding_accuracy": None if accuracy is None else round(accuracy, 4),
        "mean_similarity": round(binding.match.mean_similarity, 4),
        "missing": [labels[j] for j in binding.match.missing], "extra_faces": len(binding.match.extra),
    }


def prompt_positions(text: str, labels: Sequence[str] | None = None, num_people: int | None = None) -> list[int] | None:
    """Each person's place (1 = leftmost) as a prompt written by the template writer states it.

    With ``labels``, person j stands where the sentence naming them starts with a position marker ("the second
    person from the left (Ann) ..."); every label must be found in exactly one marker's sentence. Without
    labels, a prompt that names positions 1..N puts the people in slot order, as the template writer does.
    None when the text does not place every person."""
    from idglow.prompting.phrases import MARKER_RE, ORDINALS

    starts = [(ORDINALS.index(mt.group(1).lower()) + 1, mt.start()) for mt in MARKER_RE.finditer(text)]
    n = len(labels) if labels else num_people
    if not n or not starts:
        return None
    if not labels:
        return list(range(1, n + 1)) if sorted({p for p, _ in starts}) == list(range(1, n + 1)) else None
    bounds = [s for _, s in starts] + [len(text)]
    clauses = [(p, text[bounds[i]:bounds[i + 1]].lower()) for i, (p, _) in enumerate(starts)]
    positions = []
    for label in labels:
        pattern = re.compile(r"\b" + re.escape(label.lower()) + r"\b") if label else None
        found = {p for p, clause in clauses if pattern and pattern.search(clause)}
        if len(found) != 1:
            return None
        positions.append(found.pop())
    return positions if sorted(positions) == list(range(1, n + 1)) else None
