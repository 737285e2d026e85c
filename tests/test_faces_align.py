"""align_crop: ArcFace 5-point alignment (checked against insightface's own norm_crop) and the box fallback."""

import numpy as np
import pytest
from PIL import Image

from idglow.faces import Face, align_crop
from idglow.faces.align import ARCFACE_TEMPLATE, arcface_template, face_transform, similarity_transform


def _similarity(points: np.ndarray, scale: float, angle_deg: float, shift) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return points @ (scale * rot).T + np.asarray(shift)


def test_similarity_transform_recovers_exact_transform():
    src = np.random.default_rng(0).uniform(0, 100, size=(5, 2))
    dst = _similarity(src, 1.7, 23.0, (12.0, -4.0))
    matrix = similarity_transform(src, dst)
    mapped = src @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, dst, atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(matrix[:, :2]), 1.7**2, rtol=1e-9)


def test_similarity_transform_rejects_bad_points():
    with pytest.raises(ValueError, match="degenerate"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE)
    with pytest.raises(ValueError, match=r"\(5, 2\) and \(4, 2\)"):
        similarity_transform(ARCFACE_TEMPLATE, ARCFACE_TEMPLATE[:4])


def test_template_sizes_follow_insightface():
    from insightface.utils import face_align

    np.testing.assert_allclose(arcface_template(112), face_align.arcface_dst, atol=1e-4)
    np.testing.assert_allclose(arcface_template(224), face_align.arcface_dst * 2, atol=1e-4)
    expected_128 = face_align.arcface_dst * (128 / 128.0)
    expected_128[:, 0] += 8.0
    np.testing.assert_allclose(arcface_template(128), expected_128, atol=1e-4)


@pytest.mark.parametrize("size", [112, 128, 224])
def test_matches_insightface_norm_crop(size):
    from insightface.utils import face_align

    rng = np.random.default_rng(size)
    image = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    kps = _similarity(ARCFACE_TEMPLATE, 1.9, -12.0, (150.0, 60.0)).astype(np.float32)
    ours = np.asarray(align_crop(image, Face(bbox=(150, 60, 370, 290), kps=kps), size=size)).astype(int)
    theirs = face_align.norm_crop(image, landmark=kps, image_size=size).astype(int)
    assert ours.shape == theirs.shape == (size, size, 3)
    assert np.abs(ours - theirs).max() <= 1


def test_keypoints_land_on_template():
    image = np.zeros((240, 320, 3), dtype=np.uint8)
    kps = _similarity(ARCFACE_TEMPLATE, 1.5, 30.0, (120.0, 20.0))
    for x, y in kps:
        image[int(round(y)) - 2 : int(round(y)) + 3, int(round(x)) - 2 : int(round(x)) + 3] = 255
    crop = np.asarray(align_crop(Image.fromarray(image), Face(bbox=(0, 0, 1, 1), kps=kps)))
    for x, y in ARCFACE_TEMPLATE:
        assert crop[int(round(y)), int(round(x))].min() > 200
    assert crop.mean() < 40  # everything else stayed dark


def test_box_crop_without_keypoints():
    image = np.zeros((200, 300, 3), dtype=np.uint8)
    image[50:150, 100:200] = (255, 0, 0)  # the "face" box, red
    face = Face(bbox=(100.0, 50.0, 200.0, 150.0))
    crop = np.asarray(align_crop(image, face, size=120, margin=0.25))  # 150 px square → 120 px
    assert crop.shape == (120, 120, 3)
    inner, border = crop[22:98, 22:98], crop[:18]  # the box maps to [20, 100)
    assert inner[..., 0].min() > 200 and inner[..., 1].max() == 0
    assert border.max() == 0
    with pytest.raises(ValueError, match="margin"):
        align_crop(image, face, margin=-1)


def test_box_crop_pads_outside_the_image():
    image = np.full((64, 64, 3), 200, dtype=np.uint8)
    crop = np.asarray(align_crop(image, Face(bbox=(0.0, 0.0, 40.0, 40.0)), size=64, margin=0.5))
    assert crop[0, 0].max() == 0  # above-left of the image: black padding
    assert crop[40, 40].min() == 200


def test_bad_keypoints_shape():
    with pytest.raises(ValueError, match=r"5 points"):
        face_transform(Face(bbox=(0, 0, 10, 10), kps=np.zeros((4, 2))))
