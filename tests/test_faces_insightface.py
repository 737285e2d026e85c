"""InsightFaceAnalyzer end to end on a tiny model pack, through insightface's real FaceAnalysis/model_zoo."""

import threading

import numpy as np
import pytest
from PIL import Image

from idglow.errors import ModelFolderError
from idglow.faces import (
    FaceAnalyzer,
    InsightFaceAnalyzer,
    align_crop,
    build_tiny_insightface_pack,
    match_faces,
)
from idglow.faces.align import ARCFACE_TEMPLATE
from idglow.faces.tiny_pack import DETECTOR_FILE, GENDERAGE_FILE, RECOGNIZER_FILE

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def pack_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("insightface")
    build_tiny_insightface_pack(root, pack="tiny", seed=0, embedding_dim=64)
    return root


@pytest.fixture(scope="module")
def analyzer(pack_root):
    return InsightFaceAnalyzer(pack_root, pack="tiny", providers=CPU, det_size=(128, 128))


def _textured_square(seed: int, size: int = 32) -> np.ndarray:
    """A bright (detectable) square with a texture of its own: the tiny detector's idea of a face."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(190, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.NEAREST))


def _scene(placements, shape=(128, 128)) -> np.ndarray:
    image = np.zeros((*shape, 3), dtype=np.uint8)
    for seed, (x, y) in placements:
        image[y : y + 32, x : x + 32] = _textured_square(seed)
    return image


def test_loads_through_insightface_model_zoo(analyzer):
    from insightface.model_zoo import SCRFD, ArcFaceONNX, Attribute

    models = analyzer._app.models
    assert isinstance(models["detection"], SCRFD)
    assert isinstance(models["recognition"], ArcFaceONNX)
    assert isinstance(models["genderage"], Attribute)
    assert analyzer.embedding_dim == 64
    assert analyzer.has_genderage
    assert isinstance(analyzer, FaceAnalyzer)


def test_detects_faces_end_to_end(analyzer):
    image = np.zeros((128, 128, 3), dtype=np.uint8)
    image[32:64, 64:96] = 255
    image[96:128, 0:32] = 230
    faces = analyzer.detect(image)
    assert [f.bbox for f in faces] == [(64.0, 32.0, 96.0, 64.0), (0.0, 96.0, 32.0, 128.0)]
    for face in faces:
        x1, y1 = face.bbox[:2]
        np.testing.assert_allclose(face.kps, ARCFACE_TEMPLATE / 112.0 * 32.0 + [x1, y1], atol=0.05)
        assert face.embedding.shape == (64,)
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
        assert 0.9 < face.score <= 1.0
        assert 0.0 <= face.age <= 100.0
        assert face.gender in ("male", "female")


def test_blank_image_has_no_faces(analyzer):
    assert analyzer.detect(np.zeros((128, 128, 3), dtype=np.uint8)) == []
    assert analyzer.detect(np.full((128, 128, 3), 128, dtype=np.uint8)) == []


def test_boxes_are_in_input_coordinates_for_any_size(analyzer):
    image = np.zeros((256, 384, 3), dtype=np.uint8)  # scaled by 1/3 to fit the 128×128 detector input
    image[96:192, 192:288] = 255  # → the detector cell (64, 32, 96, 64)
    faces = analyzer.detect(image)
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].bbox, (192.0, 96.0, 288.0, 192.0), atol=1.5)
    np.testing.assert_allclose(faces[0].kps, ARCFACE_TEMPLATE / 112.0 * 96.0 + [192.0, 96.0], atol=1.5)


def test_embedding_follows_content_not_position(analyzer, tmp_path):
    a = analyzer.detect(_scene([(1, (0, 0))]))[0].embedding
    a_moved = analyzer.detect(_scene([(1, (64, 96))]))[0].embedding
    b = analyzer.detect(_scene([(2, (0, 0))]))[0].embedding
    assert float(a @ a_moved) > 0.9999
    assert float(a @ b) < 0.99
    # Paths and PIL images go through the same decoding.
    path = tmp_path / "scene.png"
    Image.fromarray(_scene([(1, (32, 32))])).save(path)
    assert float(analyzer.detect(path)[0].embedding @ a) > 0.9999
    assert float(analyzer.detect(Image.open(path))[0].embedding @ a) > 0.9999


def test_match_faces_on_insightface_output(analyzer):
    seeds = [11, 12, 13, 14]
    spots = [(0, 0), (64, 0), (32, 64), (96, 96)]
    perm = [2, 0, 3, 1]  # the person at spot k is seeds[perm[k]]
    group = analyzer.detect(_scene([(seeds[perm[k]], spots[k]) for k in range(4)]))
    references = [analyzer.detect(_scene([(s, (32, 32))]))[0].embedding for s in seeds]
    match = match_faces(group, references, min_similarity=0.99)  # a random 64-d pack has no documented value
    for k, (x, y) in enumerate(spots):
        assert match.bboxes[perm[k]] == (float(x), float(y), float(x + 32), float(y + 32))
    assert min(match.similarity) > 0.9999
    # The aligned crop of a detected face is the face itself.
    single = _scene([(11, (32, 32))])
    crop = np.asarray(align_crop(single, analyzer.detect(single)[0]))
    assert crop.shape == (112, 112, 3) and crop.mean() > 150


def test_detect_is_thread_safe(analyzer):
    image = _scene([(3, (0, 0)), (4, (64, 64))])
    expected = analyzer.detect(image)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(analyzer.detect(image))
        except Exception as err:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 20
    for faces in results:
        assert [f.bbox for f in faces] == [f.bbox for f in expected]
        np.testing.assert_allclose(faces[0].embedding, expected[0].embedding, atol=1e-6)


def test_pack_without_genderage_and_other_dim(tmp_path):
    build_tiny_insightface_pack(tmp_path, pack="small", embedding_dim=32, with_genderage=False)
    analyzer = InsightFaceAnalyzer(tmp_path, pack="small", providers=CPU, det_size=(128, 128))
    assert analyzer.embedding_dim == 32 and not analyzer.has_genderage
    face = analyzer.detect(_scene([(5, (32, 32))]))[0]
    assert face.embedding.shape == (32,)
    assert face.age is None and face.gender is None


def test_pack_folder_layouts(tmp_path):
    folder = build_tiny_insightface_pack(tmp_path / "a", pack="p")
    flat = tmp_path / "b" / "p"
    nested = tmp_path / "c" / "p" / "p"  # a pack unzipped into a folder of its own name
    for target in (flat, nested):
        target.mkdir(parents=True)
        for name in (DETECTOR_FILE, RECOGNIZER_FILE):
            (target / name).write_bytes((folder / name).read_bytes())
    for root, expected in ((tmp_path / "a", folder), (tmp_path / "b", flat), (tmp_path / "c", nested)):
        analyzer = InsightFaceAnalyzer(root, pack="p", providers=CPU, det_size=(128, 128))
        assert analyzer.folder == expected
        assert len(analyzer.detect(_scene([(6, (0, 0))]))) == 1


def test_missing_pack_names_folder_and_expected_files(tmp_path):
    with pytest.raises(ModelFolderError) as info:
        InsightFaceAnalyzer(tmp_path, pack="antelopev2", providers=CPU)
    message = str(info.value)
    assert str(tmp_path / "models" / "antelopev2") in message
    for expected in ("det_*.onnx", "glintr100.onnx", "w600k_r50.onnx", "genderage.onnx"):
        assert expected in message
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("keep", [DETECTOR_FILE, RECOGNIZER_FILE, GENDERAGE_FILE])
def test_incomplete_pack_is_refused(tmp_path, keep):
    folder = build_tiny_insightface_pack(tmp_path, pack="part")
    for name in (DETECTOR_FILE, RECOGNIZER_FILE, GENDERAGE_FILE):
        if name != keep:
            (folder / name).unlink()
    with pytest.raises(ModelFolderError, match="part.*expected: a detector"):
        InsightFaceAnalyzer(tmp_path, pack="part", providers=CPU)


def test_bad_arguments():
    with pytest.raises(ValueError, match="det_size"):
        InsightFaceAnalyzer("/nonexistent", det_size=(0, 640))
    with pytest.raises(ValueError, match="det_thresh"):
        InsightFaceAnalyzer("/nonexistent", det_thresh=1.5)
