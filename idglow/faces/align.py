"""Face crops: 5-point similarity alignment to the ArcFace template, or a square crop around the box."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from idglow.faces.base import Face
from idglow.images import to_rgb_array

# insightface's ArcFace template for a 112×112 crop: left eye, right eye, nose tip, left and right mouth
# corners ("left" = smaller x in the image).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def arcface_template(size: int = 112) -> np.ndarray:
    """The 5 template points for a ``size``×``size`` crop, following insightface's ``estimate_norm``:
    multiples of 112 scale the template, other sizes use the 128 layout (template shifted 8 px right)."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if size % 112 == 0:
        ratio, shift_x = size / 112.0, 0.0
    else:
        ratio = size / 128.0
        shift_x = 8.0 * ratio
    points = ARCFACE_TEMPLATE * ratio
    points[:, 0] += shift_x
    return points


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` (N, 2) onto ``dst``
    (N, 2), as a (2, 3) affine matrix (Umeyama, 1991, without reflection)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"expected two (N, 2) point sets with N >= 2, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = float((src_c**2).sum() / len(src))
    if src_var < 1e-12:
        raise ValueError("keypoints are degenerate (all at one point)")
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = float((s * d).sum() / src_var)
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def face_transform(face: Face, size: int = 112, margin: float = 0.25) -> np.ndarray:
    """The (2, 3) matrix that ``align_crop`` applies to map image pixels into the ``size``×``size`` crop."""
    if face.kps is not None:
        kps = np.asarray(face.kps, dtype=np.float64).reshape(-1, 2)
        if kps.shape != (5, 2):
            raise ValueError(f"face.kps must hold 5 points (5, 2), got shape {np.shape(face.kps)}")
        return similarity_transform(kps, arcface_template(size))
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    x1, y1, x2, y2 = (float(v) for v in face.bbox)
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    if side <= 0:
        raise ValueError(f"face.bbox {face.bbox} is empty")
    scale = size / side
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    return np.array([[scale, 0.0, size / 2.0 - scale * cx], [0.0, scale, size / 2.0 - scale * cy]])


def align_crop(image: Any, face: Face, size: int = 112, *, margin: float = 0.25) -> Image.Image:
    """Crop ``face`` out of ``image`` (PIL image, path or uint8 RGB array) as a ``size``×``size`` RGB image.

    With keypoints, the 5 points are mapped onto the ArcFace template by a least-squares similarity
    transform (the crop that ArcFace-style recognizers expect). Without keypoints, a square around the box
    centre, ``margin`` × the longer box side wider on every side. Pixels outside the image are black.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    import cv2

    array = to_rgb_array(image)
    matrix = face_transform(face, size=size, margin=margin)
    crop = cv2.warpAffine(array, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    return Image.fromarray(crop)
