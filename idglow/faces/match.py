"""Assign generated faces to reference identities (Hungarian matching on cosine distance)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from idglow.faces.base import Face, FaceMatch


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def match_faces(
    generated: Sequence[Face],
    references: Sequence[np.ndarray],
    *,
    min_similarity: float = 0.0,
    duplicate_similarity: float | None = None,
) -> FaceMatch:
    """Match faces found in a generated image to the reference embeddings, one face per slot.

    Hungarian assignment (``scipy.optimize.linear_sum_assignment``) on cost 1 − cos. A slot whose assigned
    face has similarity below ``min_similarity`` counts as missing (similarity 0). A slot is a duplicate when
    a face left unassigned resembles it at least ``duplicate_similarity`` (default: ``min_similarity``) and
    more than it resembles any other slot.
    """
    n_slots = len(references)
    faces = [f for f in generated if f.embedding is not None]
    index_of = [i for i, f in enumerate(generated) if f.embedding is not None]
    similarity = [0.0] * n_slots
    bboxes: list[tuple[float, float, float, float] | None] = [None] * n_slots
    face_of_slot: list[int | None] = [None] * n_slots
    if n_slots == 0 or not faces:
        return FaceMatch(similarity, bboxes, face_of_slot, missing=list(range(n_slots)),
                         extra=list(range(len(generated))))
    refs = _unit_rows(np.stack([np.asarray(r, dtype=np.float64).reshape(-1) for r in references]))
    embs = _unit_rows(np.stack([np.asarray(f.embedding, dtype=np.float64).reshape(-1) for f in faces]))
    if refs.shape[1] != embs.shape[1]:
        raise ValueError(
            f"reference embeddings have {refs.shape[1]} dims but the generated faces' embeddings have "
            f"{embs.shape[1]}; use the same face analyzer for both"
        )
    cos = embs @ refs.T  # (faces, slots)
    rows, cols = linear_sum_assignment(1.0 - cos)
    assigned_faces: set[int] = set()
    for r, c in zip(rows, cols):
        if cos[r, c] >= min_similarity:
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
    return FaceMatch(similarity, bboxes, face_of_slot, missing=missing, extra=extra,
                     duplicates=sorted(duplicates))
