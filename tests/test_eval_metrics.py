"""Evaluation metrics on constructed cases, manifests, and identity metrics on real photos (dlib)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from idglow.errors import InputError
from idglow.eval.manifest import BUILTIN_MANIFESTS, load_manifest, parse_manifest
from idglow.eval.metrics import (
    age_errors,
    bootstrap_ci,
    identity_metrics,
    mean_or_none,
    pareto_front,
    same_person_threshold,
    summarize,
)
from idglow.faces.base import Face
from idglow.faces.match import match_faces


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _refs(n=4, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    return [_unit(rng.normal(size=dim)) for _ in range(n)]


def _face(embedding, x=0.0, age=None):
    return Face(bbox=(x, 0.0, x + 10.0, 10.0), embedding=np.asarray(embedding, dtype=np.float32), age=age)


def test_known_permutation_is_undone_by_hungarian_matching():
    refs = _refs(4)
    perm = [2, 0, 3, 1]  # generated face k shows subject perm[k]
    faces = [_face(refs[p], x=10.0 * k) for k, p in enumerate(perm)]
    match = match_faces(faces, refs, min_similarity=0.5)
    assert match.face_of_slot == [perm.index(s) for s in range(4)]
    m = identity_metrics(match)
    assert m["face_sim_mean"] == pytest.approx(1.0, abs=1e-6)
    assert m["face_sim_worst"] == pytest.approx(1.0, abs=1e-6)
    assert m["missing_rate"] == 0.0 and m["duplicate_rate"] == 0.0


def test_partial_similarity_mean_and_worst():
    refs = _refs(3, seed=1)
    other = _refs(1, seed=99)[0]
    # subject 1's face is a mix: its cosine to the reference is known exactly.
    mixed = _unit(0.6 * refs[1] + 0.8 * _unit(other - (other @ refs[1]) * refs[1]))
    faces = [_face(refs[0]), _face(mixed, x=20), _face(refs[2], x=40)]
    m = identity_metrics(match_faces(faces, refs, min_similarity=0.5))
    assert m["face_sim_worst"] == pytest.approx(0.6, abs=1e-5)
    assert m["face_sim_mean"] == pytest.approx((1 + 0.6 + 1) / 3, abs=1e-5)


def test_missing_face_counts_zero_and_rate():
    refs = _refs(3, seed=2)
    faces = [_face(refs[0]), _face(refs[2], x=30)]
    m = identity_metrics(match_faces(faces, refs, min_similarity=0.5))
    assert m["missing_rate"] == pytest.approx(1 / 3)
    assert m["face_sim_worst"] == 0.0
    assert m["face_sim_mean"] == pytest.approx(2 / 3, abs=1e-6)
    assert identity_metrics(match_faces([], refs, min_similarity=0.5))["missing_rate"] == 1.0


def test_duplicated_face_is_detected():
    refs = _refs(2, seed=3)
    # Subject 0 appears twice (slightly different), subject 1 once.
    near = _unit(refs[0] + 0.05 * _refs(1, seed=7)[0])
    faces = [_face(refs[0]), _face(refs[1], x=20), _face(near, x=40)]
    match = match_faces(faces, refs, min_similarity=0.5, duplicate_similarity=0.9)
    m = identity_metrics(match)
    assert match.duplicates == [0]
    assert m["duplicate_rate"] == 0.5 and m["missing_rate"] == 0.0
    # Same image with a strict threshold: no duplicate.
    strict = match_faces(faces, refs, min_similarity=0.5, duplicate_similarity=0.9999)
    assert identity_metrics(strict)["duplicate_rate"] == 0.0


def test_low_similarity_assignment_becomes_missing():
    """dlib-sized embeddings: a face that resembles its subject at cos 0.85 (below dlib's same-person
    threshold) is no longer that subject's face. It counts as missing, scores 0, and the face is extra."""
    refs = _refs(2, dim=128, seed=8)
    other = _refs(1, dim=128, seed=9)[0]
    weak = _unit(0.85 * refs[1] + np.sqrt(1 - 0.85**2) * _unit(other - (other @ refs[1]) * refs[1]))
    faces = [_face(refs[0]), _face(weak, x=20)]
    match = match_faces(faces, refs)
    m = identity_metrics(match)
    assert match.face_of_slot == [0, None] and match.missing == [1] and match.extra == [1]
    assert m["missing_rate"] == 0.5 and m["face_sim_worst"] == 0.0
    # The same face at a threshold it passes is assigned and scores its similarity.
    loose = identity_metrics(match_faces(faces, refs, min_similarity=0.8))
    assert loose["missing_rate"] == 0.0 and loose["face_sim_worst"] == pytest.approx(0.85, abs=1e-5)


def test_age_errors_follow_the_matched_faces():
    refs = _refs(3, seed=4)
    # Faces in shuffled order with known ages; subject 2 is missing.
    faces = [_face(refs[1], x=0, age=30.0), _face(refs[0], x=20, age=9.0)]
    match = match_faces(faces, refs, min_similarity=0.5)
    errors = age_errors(match, [6.0, 35.0, 70.0])
    assert errors == [pytest.approx(3.0), pytest.approx(5.0), None]
    assert mean_or_none(errors) == pytest.approx(4.0)
    # An analyzer without ages gives no error at all.
    no_age = [_face(refs[1]), _face(refs[0], x=20)]
    no_age_match = match_faces(no_age, refs, min_similarity=0.5)
    assert age_errors(no_age_match, [6.0, 35.0, 70.0]) == [None, None, None]
    assert mean_or_none([None, None]) is None
    with pytest.raises(ValueError, match="2 target ages for 3"):
        age_errors(match, [1.0, 2.0])


def test_bootstrap_ci_properties():
    values = [0.1, 0.4, 0.35, 0.8, 0.55, 0.6, 0.2, 0.9]
    low, high = bootstrap_ci(values, num_resamples=2000, seed=0)
    assert low < np.mean(values) < high
    assert min(values) <= low and high <= max(values)
    assert bootstrap_ci(values, num_resamples=2000, seed=0) == (low, high)  # reproducible
    narrow = bootstrap_ci(values, num_resamples=2000, confidence=0.5, seed=0)
    assert narrow[0] >= low and narrow[1] <= high
    assert bootstrap_ci([0.3]) == (0.3, 0.3)
    assert bootstrap_ci([0.5] * 5) == (0.5, 0.5)
    with pytest.raises(ValueError):
        bootstrap_ci([])
    s = summarize([0.2, None, 0.4])
    assert s.n == 2 and s.mean == pytest.approx(0.3)
    assert summarize([None, None]) is None


def test_pareto_front():
    points = {"base": (0.1, 0.8), "always_on": (0.7, 0.5), "idglow": (0.65, 0.7), "bad": (0.6, 0.4)}
    assert pareto_front(points) == ["base", "always_on", "idglow"]
    assert pareto_front({"a": (0.2, None), "b": (0.5, None)}) == ["b"]
    assert pareto_front({"a": (0.5, 0.5), "b": (0.5, 0.5)}) == ["a", "b"]


def test_same_person_threshold():
    assert same_person_threshold(128) == pytest.approx(0.92)
    assert same_person_threshold(512) == pytest.approx(0.36)
    with pytest.raises(ValueError, match="64-d"):
        same_person_threshold(64)


# --- manifests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN_MANIFESTS)
def test_builtin_manifests(name):
    m = load_manifest(name)
    assert m.task == name
    assert {c.num_subjects for c in m.cases} == {2, 3, 4}
    assert len({c.id for c in m.cases}) == len(m.cases)
    for case in m.cases:
        assert case.scene
        for s in case.subjects:
            assert s.package in ("insightface", "skimage")
        if name == "age":
            assert all(a is not None for a in case.target_ages)
    assert len({c.seed for c in m.cases}) == len(m.cases)


def _manifest(**overrides):
    data = {"task": "age", "cases": [{"id": "c1", "scene": "a park",
                                      "subjects": [{"image": "a.jpg", "target_age": 6}]}]}
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_manifest(task="swap"), "task must be one of"),
        (_manifest(cases=[]), "non-empty list"),
        (_manifest(cases=[{"id": "c1", "subjects": [{"image": "a.jpg"}]}]), "target age for at least one person"),
        (_manifest(cases=[{"id": "c 1", "subjects": [{"image": "a.jpg", "target_age": 3}]}]), "id must match"),
        (_manifest(cases=[{"id": "c1", "subjects": [{"image": "a.jpg", "target_age": 300}]}]), "between 0 and 120"),
        (_manifest(cases=[{"id": "c1", "subjects": [{"package": "skimage", "path": "x.png", "target_age": 3}]}]),
         "needs 'face'"),
        (_manifest(cases=[{"id": "c1", "subjects": [{"image": "a.jpg", "package": "skimage", "path": "x", "face": 0,
                                                     "target_age": 1}]}]), "either 'image'"),
        (_manifest(cases=[{"id": "c1", "subjects": [{"image": "a.jpg", "target_age": 3, "age": 3}]}]),
         "unknown subject keys"),
        (_manifest(cases=[{"id": "c1", "subjects": [{"image": "a.jpg", "target_age": 3}] * 7}]), "1 to 6"),
        (_manifest(cases=[{"id": "c1", "subjects": [{"image": "a.jpg", "target_age": 3}]},
                          {"id": "c1", "subjects": [{"image": "b.jpg", "target_age": 3}]}]), "duplicate case id"),
    ],
)
def test_manifest_errors_name_the_problem(data, message):
    with pytest.raises(InputError, match=message) as info:
        parse_manifest(data, source="m.json")
    assert "m.json" in str(info.value)


def test_age_manifest_allows_people_who_keep_their_age():
    m = parse_manifest(_manifest(cases=[{"id": "c1", "subjects": [{"image": "a.jpg", "target_age": 6},
                                                                  {"image": "b.jpg"}]}]), source="m.json")
    assert m.cases[0].target_ages == [6.0, None]


def test_manifest_file_and_yaml(tmp_path):
    path = tmp_path / "set.yaml"
    path.write_text("task: fusion\nname: mine\ncases:\n  - id: x\n    scene: a beach\n    seed: 5\n"
                    "    subjects:\n      - image: photos/a.jpg\n      - image: photos/b.jpg\n        face_index: 1\n")
    m = load_manifest(path)
    assert (m.name, m.task, m.root) == ("mine", "fusion", tmp_path)
    assert m.cases[0].seed == 5 and m.cases[0].subjects[1].face_index == 1
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_manifest(bad)
    with pytest.raises(InputError, match="neither a built-in"):
        load_manifest(tmp_path / "missing.json")
    assert json.loads(json.dumps(m.cases[0].subjects[0].to_dict())) == {"image": "photos/a.jpg"}


# --- real photos ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dlib_analyzer():
    from idglow.faces.dlib_backend import DlibAnalyzer

    return DlibAnalyzer()


def test_identity_metrics_on_real_photos(dlib_analyzer):
    """The bundled group photo scored against crops of its own people: every subject found, high FaceSim,
    and a photo with one person pasted twice shows that person as duplicated."""
    from PIL import Image

    from idglow.eval.manifest import SubjectResolver, SubjectSpec
    from idglow.images import decode_image, to_rgb_array
    from idglow.samples import group_photo

    resolver = SubjectResolver(dlib_analyzer)
    specs = [SubjectSpec(package="insightface", path="data/images/t1.jpg", face=i) for i in (4, 3, 2)]
    refs = [dlib_analyzer.detect(to_rgb_array(resolver.resolve(s).image))[0].embedding for s in specs]
    group = decode_image(group_photo())
    faces = dlib_analyzer.detect(to_rgb_array(group))
    match = match_faces(faces, refs, duplicate_similarity=same_person_threshold(128))
    m = identity_metrics(match)
    assert m["missing_rate"] == 0.0 and m["duplicate_rate"] == 0.0
    assert m["face_sim_worst"] > 0.9
    # Slot order follows the references, not the photo: subject 0 is the 5th face from the left.
    left_to_right = sorted(range(len(faces)), key=lambda k: faces[k].bbox[0])
    assert [left_to_right.index(match.face_of_slot[s]) for s in range(3)] == [4, 3, 2]

    # Paste subject 0 (face 4 from the left) over face 5, who is no subject: subject 0 is now duplicated.
    boxes = [faces[k].bbox for k in left_to_right]
    pad = 20
    src = tuple(int(v) for v in (boxes[4][0] - pad, boxes[4][1] - pad, boxes[4][2] + pad, boxes[4][3] + pad))
    patch = group.crop(src)
    edited = group.copy()
    cx, cy = (boxes[5][0] + boxes[5][2]) / 2, (boxes[5][1] + boxes[5][3]) / 2
    edited.paste(patch, (int(cx - patch.width / 2), int(cy - patch.height / 2)))
    assert isinstance(edited, Image.Image)
    faces2 = dlib_analyzer.detect(to_rgb_array(edited))
    match2 = match_faces(faces2, refs, duplicate_similarity=same_person_threshold(128))
    assert identity_metrics(match2)["duplicate_rate"] == pytest.approx(1 / 3)
    assert match2.duplicates == [0]
