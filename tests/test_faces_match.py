"""match_faces on constructed embeddings: assignment, missing, extra and duplicate slots."""

import subprocess
import sys

import numpy as np
import pytest

from idglow.faces import Face, FaceMatch, match_faces


def _unit(angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([np.cos(a), np.sin(a)], dtype=np.float32)


def _face(embedding, x: float = 0.0) -> Face:
    return Face(bbox=(x, 0.0, x + 10.0, 10.0), embedding=None if embedding is None else np.asarray(embedding))


def _identities(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q[:n].astype(np.float32)  # orthonormal rows


def test_recovers_shuffled_assignment():
    refs = _identities(6)
    perm = np.random.default_rng(1).permutation(6)  # generated face k shows person perm[k]
    noise = np.random.default_rng(2).normal(0, 0.05, size=refs.shape)
    faces = [_face(refs[perm[k]] + noise[k], x=20.0 * k) for k in range(6)]
    match = match_faces(faces, list(refs), min_similarity=0.5)
    for k in range(6):
        assert match.face_of_slot[perm[k]] == k
        assert match.bboxes[perm[k]] == faces[k].bbox
    assert min(match.similarity) > 0.9
    assert match.missing == [] and match.extra == [] and match.duplicates == []


def test_hungarian_is_optimal_where_greedy_is_not():
    # cos(face, slot): face0 → (0.90, 0.80), face1 → (0.85, −0.08). Greedy takes face0→slot0 first; the
    # optimal total pairs face0→slot1 and face1→slot0.
    refs = [_unit(0.0), _unit(62.7)]
    faces = [_face(_unit(25.8)), _face(_unit(-31.8), x=20.0)]
    match = match_faces(faces, refs, min_similarity=0.0)
    assert match.face_of_slot == [1, 0]
    np.testing.assert_allclose(match.similarity, [0.85, 0.80], atol=0.01)


def test_missing_slot_when_fewer_faces():
    refs = _identities(3)
    faces = [_face(refs[2]), _face(refs[0], x=20.0)]
    match = match_faces(faces, list(refs), min_similarity=0.5)
    assert match.face_of_slot == [1, None, 0]
    assert match.missing == [1]
    assert match.similarity[1] == 0.0 and match.bboxes[1] is None
    assert match.extra == [] and match.duplicates == []


def test_low_similarity_counts_as_missing_and_extra():
    refs = _identities(2)
    stranger = 0.3 * refs[1] + np.sqrt(1 - 0.3**2) * _identities(3)[2]  # cos 0.3 to slot 1
    faces = [_face(refs[0]), _face(stranger, x=20.0)]
    match = match_faces(faces, list(refs), min_similarity=0.5)
    assert match.face_of_slot == [0, None]
    assert match.missing == [1]
    assert match.extra == [1]
    assert match.duplicates == []
    # Without a threshold the stranger fills the slot.
    assert match_faces(faces, list(refs), min_similarity=0.0).face_of_slot == [0, 1]


def test_duplicate_slot_when_two_faces_resemble_one_reference():
    refs = _identities(2)
    rng = np.random.default_rng(3)
    faces = [
        _face(refs[0] + rng.normal(0, 0.02, 32)),
        _face(refs[1] + rng.normal(0, 0.02, 32), x=20.0),
        _face(refs[0] + rng.normal(0, 0.05, 32), x=40.0),  # a second copy of person 0
    ]
    match = match_faces(faces, list(refs), min_similarity=0.5)
    assert match.face_of_slot == [0, 1]
    assert match.duplicates == [0]
    assert match.extra == [2]
    assert match.missing == []


def test_duplicate_threshold_is_separate_from_match_threshold():
    refs = _identities(2)
    weak_copy = 0.6 * refs[0] + 0.8 * _identities(3)[2]  # cos 0.6 to slot 0
    faces = [_face(refs[0]), _face(refs[1], x=20.0), _face(weak_copy, x=40.0)]
    assert match_faces(faces, list(refs), min_similarity=0.5).duplicates == [0]
    strict = match_faces(faces, list(refs), min_similarity=0.5, duplicate_similarity=0.9)
    assert strict.duplicates == [] and strict.extra == [2]


def test_faces_without_embeddings_are_extra():
    refs = _identities(1)
    faces = [_face(None), _face(refs[0], x=20.0)]
    match = match_faces(faces, list(refs), min_similarity=0.5)
    assert match.face_of_slot == [1]
    assert match.extra == [0]


def test_no_faces_and_no_references():
    refs = _identities(2)
    empty = match_faces([], list(refs), min_similarity=0.5)
    assert empty.missing == [0, 1] and empty.similarity == [0.0, 0.0] and empty.face_of_slot == [None, None]
    none = match_faces([_face(refs[0])], [], min_similarity=0.5)
    assert none.similarity == [] and none.extra == [0]


def test_dimension_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match="128 dims.*512"):
        match_faces([_face(np.ones(512))], [np.ones(128)])


def _with_cosines(basis: np.ndarray, cosines: list[float]) -> np.ndarray:
    """A unit vector whose cosine to each (unit) row of ``basis`` is ``cosines`` (rows need not be orthogonal)."""
    coef = np.linalg.solve(basis @ basis.T, np.asarray(cosines, dtype=np.float64))
    inside = coef @ basis
    rest = np.random.default_rng(5).normal(size=basis.shape[1])
    rest -= basis.T @ np.linalg.lstsq(basis.T, rest, rcond=None)[0]  # orthogonal to every row
    return inside + np.sqrt(1.0 - inside @ inside) * rest / np.linalg.norm(rest)


def _two_slot_refs(dim: int, cos_between: float) -> np.ndarray:
    e = _identities(2, dim=dim, seed=4).astype(np.float64)
    return np.stack([e[0], cos_between * e[0] + np.sqrt(1 - cos_between**2) * e[1]])


def test_threshold_applies_inside_the_assignment():
    # cos(face, slot): face A → (1.00, 0.93), face B → (0.95, 0.90). With no threshold the best total pairs
    # A→0 and B→1 (0.90); thresholding that afterwards at 0.92 would lose slot 1. Inside the assignment
    # only pairs ≥ 0.92 are allowed, so A→1 and B→0 both count.
    refs = _two_slot_refs(64, 0.93)
    face_a = refs[0]
    face_b = _with_cosines(refs, [0.95, 0.90])
    faces = [_face(face_a), _face(face_b, x=20.0)]
    assert match_faces(faces, list(refs), min_similarity=0.0).face_of_slot == [0, 1]
    match = match_faces(faces, list(refs), min_similarity=0.92)
    assert match.face_of_slot == [1, 0]
    np.testing.assert_allclose(match.similarity, [0.95, 0.93], atol=1e-6)
    assert match.missing == [] and match.extra == []


@pytest.mark.parametrize(("dim", "below", "above"), [(128, 0.90, 0.93), (512, 0.33, 0.38)])
def test_default_threshold_is_the_backends_same_person_threshold(dim, below, above):
    from idglow.faces import SAME_PERSON_THRESHOLDS

    assert below < SAME_PERSON_THRESHOLDS[dim] < above
    refs = _identities(2, dim=dim, seed=6).astype(np.float64)
    stranger = _with_cosines(refs, [below, 0.0])
    lookalike = _with_cosines(refs, [above, 0.0])
    weak = match_faces([_face(stranger)], list(refs))
    assert weak.face_of_slot == [None, None] and weak.missing == [0, 1] and weak.extra == [0]
    strong = match_faces([_face(lookalike)], list(refs))
    assert strong.face_of_slot == [0, None] and strong.similarity[0] == pytest.approx(above, abs=1e-6)


def test_unknown_embedding_size_needs_an_explicit_threshold():
    refs = _identities(2)
    with pytest.raises(ValueError, match="32-d.*pass min_similarity"):
        match_faces([_face(refs[0])], list(refs))


def test_analyzer_threshold_prefers_the_analyzers_own_value():
    from types import SimpleNamespace

    from idglow.faces import analyzer_match_threshold

    assert analyzer_match_threshold(SimpleNamespace(embedding_dim=128)) == pytest.approx(0.92)
    assert analyzer_match_threshold(SimpleNamespace(embedding_dim=64, same_person_threshold=0.7)) == 0.7
    with pytest.raises(ValueError, match="64-d"):
        analyzer_match_threshold(SimpleNamespace(embedding_dim=64, same_person_threshold=None))


def test_face_match_dict_round_trip():
    refs = _identities(3)
    faces = [_face(refs[0]), _face(refs[0], x=20.0)]
    match = match_faces(faces, list(refs), min_similarity=0.5)
    again = FaceMatch.from_dict(match.to_dict())
    assert again.to_dict() == match.to_dict()
    assert again.missing == [1, 2] and again.duplicates == [0]


def test_importing_faces_loads_no_backend():
    code = (
        "import sys, idglow.faces\n"
        "heavy = [m for m in ('dlib', 'insightface', 'onnxruntime', 'cv2', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
