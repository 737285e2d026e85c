"""Assign generated faces to reference identities (Hungarian matching on cosine distance)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from idglow.faces.base import Face, FaceMatch

#: Cosine similarity at or above which two L2-normalised embeddings show the same person, per face backend
#: (keyed by embedding size).
#:
#: - 128 — dlib's ResNet (``DlibAnalyzer``): dlib documents "same person" as a Euclidean distance below 0.6
#:   between raw descriptors. Raw descriptors have a norm of about 1.5 (1.36–1.57 on the six faces of
#:   insightface's ``t1.jpg``), so on the unit vectors the analyzer returns the rule reads
#:   cos ≥ 1 − 0.6² / (2 · 1.5²) = 0.92. (The six different people of ``t1.jpg`` reach at most 0.912.)
#: - 512 — insightface ArcFace (``InsightFaceAnalyzer``, antelopev2 / buffalo_l): insightface's NIST FRVT 1:1
#:   submission accepts a pair below a squared Euclidean distance of 1.2848 between unit embeddings, i.e.
#:   cos ≥ 1 − 1.2848 / 2 ≈ 0.36.
SAME_PERSON_THRESHOLDS: dict[int, float] = {128: 0.92, 512: 0.36}


def same_person_threshold(embedding_dim: int) -> float:
    """The documented same-person cosine threshold of the face backend with embeddings of this size.

    Raises ValueError for a size with no documented threshold (pass ``min_similarity`` explicitly)."""
    try:
        return SAME_PERSON_THRESHOLDS[int(embedding_dim)]
    except KeyError:
        known = ", ".join(f"{d}-d" for d in SAME_PERSON_THRESHOLDS)
        raise ValueError(
            f"no documented same-person threshold for {embedding_dim}-d face embeddings (known: {known}); "
            "pass min_similarity explicitly"
        ) from None


def analyzer_match_threshold(analyzer: Any) -> float:
    """The same-person threshold of a face analyzer: its ``same_person_threshold`` attribute when it has one,
    else the documented value for its embedding size."""
    value = getattr(analyzer, "same_person_threshold", None)
    return float(value) if value is not None else same_person_threshold(analyzer.embedding_dim)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _gated_assignment(cos: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Hungarian assignment that only pairs a face with a slot at or above ``threshold``.

    Pairs below the threshold cost more than any full set of allowed pairs, so the assignment first
    maximises the number of allowed pairs, then their total similarity; the forbidden pairs it still
    returns (when faces or slots are left over) are dropped."""
    allowed = cos >= threshold
    forbidden_cost = 2.0 * min(cos.shape) + 1.0  # > the largest possible sum of allowed costs (each ≤ 2)
    cost = np.where(allowed, 1.0 - cos, forbidden_cost)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if allowed[r, c]]


def match_faces(
    generated: Sequence[Face],
    references: Sequence[np.ndarray],
    *,
    min_similarity: float | None = None,
    duplicate_similarity: float | None = None,
) -> FaceMatch:
    """Match faces found in a generated image to the reference embeddings, one face per slot.

    Hungarian assignment (``scipy.optimize.linear_sum_assignment``) on cost 1 − cos, restricted to pairs
    with similarity ≥ ``min_similarity``: a slot with no such face is missing (similarity 0) and a face
    assigned to no slot is extra. ``min_similarity`` defaults to the face backend's documented same-person
    threshold for the embedding size (``SAME_PERSON_THRESHOLDS``). A slot is a duplicate when a face left
    unassigned resembles it at least ``duplicate_similarity`` (default: ``min_similarity``) and more than it
    resembles any other slot.
    """
    n_slots = len(references)
    faces = [f for f in generated if f.embedding is not None]
    index_of = [i for i, f in enumerate(generated) if f.embedding is not None]
    similarity = [0.0] * n_slots
    bboxes: list[tuple[float, float, float, float] | None] = [None] * n_slots
    face_of_slot: list[int | None] = [None] * n_slots
    if n_slots == 0 or not faces:
        return FaceMatch(similarity, bboxes, face_of_slot, missing=list(range(n_slots)),
                         extra=list(range(len(generated))), ages=[None] * n_slots)
    refs = _unit_rows(np.stack([np.asarray(r, dtype=np.float64).reshape(-1) for r in references]))
    embs = _unit_rows(np.stack([np.asarray(f.embedding, dtype=np.float64).reshape(-1) for f in faces]))
    if refs.shape[1] != embs.shape[1]:
        raise ValueError(
            f"reference embeddings have {refs.shape[1]} dims but the generated faces' embeddings have "
            f"{embs.shape[1]}; use the same face analyzer for both"
        )
    if min_similarity is None:
        min_similarity = same_person_threshold(refs.shape[1])
    cos = embs @ refs.T  # (faces, slots)
    assigned_faces: set[int] = set()
    for r, c in _gated_assignment(cos, min_similarity):
        similarity[c] = float(cos[r, c])
        bboxes[c] = tuple(float(v) for v in faces[r].bbox)
        face_of_slot[c] = index_of[r]
        assigned_faces.add(r)
    missing = [s for s in range(n_slots) if face_of_slot[s] is None]
    extra_local = [r for r in range(len(faces)) if r not in assigned_faces]
    threshold = min_similarity if duplicate_similarity is None else duplicate_similarity
    duplicates: set[int] = set()
    for r in extra_local:
        best = int(np.argmax(cos[r]))
        if cos[r, best] >= threshold and face_of_slot[best] is not None:
            duplicates.add(best)
    extra = sorted([index_of[r] for r in extra_local] +
                   [i for i, f in enumerate(generated) if f.embedding is None])
    ages = [None if i is None or generated[i].age is None else float(generated[i].age) for i in face_of_slot]
    return FaceMatch(similarity, bboxes, face_of_slot, missing=missing, extra=extra,
                     duplicates=sorted(duplicates), ages=ages)
