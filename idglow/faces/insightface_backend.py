"""insightface face backend: SCRFD detection, ArcFace embeddings and genderage from a local model pack.

Nothing is ever downloaded: the pack folder must exist (``<model_root>/models/<pack>``, insightface's own
layout, or ``<model_root>/<pack>``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from idglow.errors import ModelFolderError
from idglow.faces.base import INSIGHTFACE_DETECTION_THRESHOLD, Face, l2_normalize, sort_largest_first
from idglow.faces.match import SAME_PERSON_THRESHOLDS
from idglow.images import to_rgb_array

logger = logging.getLogger(__name__)

EXPECTED_FILES = [
    "a detector (det_*.onnx or scrfd_*.onnx)",
    "a recognition model (e.g. glintr100.onnx or w600k_r50.onnx)",
    "optional genderage.onnx",
]
_TASKS = ("detection", "recognition", "genderage")


def resolve_pack_folder(model_root: str | Path, pack: str) -> Path:
    """The folder of ``pack`` under ``model_root``: ``models/<pack>`` (insightface's layout) or ``<pack>``;
    a pack unzipped into a same-named subfolder (``<pack>/<pack>``) is found too.

    Raises ModelFolderError naming the folder and the expected files when no such folder holds models.
    """
    root = Path(model_root).expanduser()
    candidates = [root / "models" / pack, root / pack]
    for folder in candidates:
        if not folder.is_dir():
            continue
        for inner in (folder, folder / pack):
            if (inner / "manifest.json").is_file() or any(inner.glob("*.onnx")):
                return inner
    raise ModelFolderError(str(candidates[0]), EXPECTED_FILES, what=f"insightface model pack {pack!r}")


def _gender_word(value: Any) -> str | None:
    if value is None:
        return None
    return "male" if int(value) == 1 else "female"


class InsightFaceAnalyzer:
    """Face analyzer on insightface's ``FaceAnalysis``, loaded from a local model pack.

    Args:
        model_root: folder that holds ``models/<pack>`` (like ``~/.insightface``) or ``<pack>``.
        pack: the pack's folder name, e.g. ``"antelopev2"`` (ArcFace glintr100, 512-d) or ``"buffalo_l"``.
        providers: ONNX Runtime execution providers; default: insightface's choice for this machine.
        det_size: detector input size (width, height).
        det_thresh: detector score threshold in [0, 1]; default
            :data:`idglow.faces.base.INSIGHTFACE_DETECTION_THRESHOLD`.

    Only the detection, recognition and genderage models of the pack are used. Embeddings are
    L2-normalised; ``embedding_dim`` is the recognition model's output size. Age and gender come from the
    pack's genderage model when it has one, else they are None. ``detect`` is thread-safe.
    """

    def __init__(
        self,
        model_root: str | Path,
        pack: str = "antelopev2",
        providers: Sequence[Any] | None = None,
        det_size: tuple[int, int] = (640, 640),
        det_thresh: float | None = None,
    ):
        det_thresh = INSIGHTFACE_DETECTION_THRESHOLD if det_thresh is None else float(det_thresh)
        if len(det_size) != 2 or min(int(v) for v in det_size) <= 0:
            raise ValueError(f"det_size must be two positive integers (width, height), got {det_size}")
        if not 0.0 <= det_thresh <= 1.0:
            raise ValueError(f"det_thresh must be in [0, 1], got {det_thresh}")
        folder = resolve_pack_folder(model_root, pack)
        from insightface.app import FaceAnalysis

        try:
            # A directory path makes FaceAnalysis load from it directly; it only downloads for bare names.
            self._app = FaceAnalysis(
                name=str(folder), root=str(folder), allowed_modules=list(_TASKS), providers=providers
            )
        except (AssertionError, KeyError):
            # FaceAnalysis asserts that the folder held a detector.
            raise ModelFolderError(
                str(folder), EXPECTED_FILES, what=f"insightface model pack {pack!r}"
            ) from None
        if "recognition" not in self._app.models:
            raise ModelFolderError(str(folder), EXPECTED_FILES, what=f"insightface model pack {pack!r}")
        self._app.prepare(ctx_id=0, det_thresh=float(det_thresh), det_size=tuple(int(v) for v in det_size))
        self.folder = folder
        self.pack = pack
        self.det_size = tuple(int(v) for v in det_size)
        self.has_genderage = "genderage" in self._app.models
        self.embedding_dim = self._recognition_dim()
        #: ArcFace's documented same-person threshold (512-d); None for a recognition model of another size.
        self.same_person_threshold = SAME_PERSON_THRESHOLDS.get(self.embedding_dim)
        self._lock = threading.Lock()
        logger.debug("insightface pack %s loaded from %s (tasks: %s)", pack, folder, sorted(self._app.models))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_root={str(self.folder)!r}, pack={self.pack!r})"

    def _recognition_dim(self) -> int:
        recognizer = self._app.models["recognition"]
        shape = getattr(recognizer, "output_shape", None)
        if shape is not None and isinstance(shape[-1], (int, np.integer)) and shape[-1] > 0:
            return int(shape[-1])
        width, height = recognizer.input_size
        return int(
            np.asarray(recognizer.get_feat(np.zeros((height, width, 3), np.uint8))).reshape(-1).shape[0]
        )

    def detect(self, image: Any) -> list[Face]:
        """Faces in ``image`` (PIL image, path, bytes or uint8 RGB array), largest first."""
        rgb = to_rgb_array(image)
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        with self._lock:
            found = self._app.get(bgr)
        height, width = rgb.shape[:2]
        faces = []
        for item in found:
            x1, y1, x2, y2 = (float(v) for v in item.bbox[:4])
            embedding = item.get("embedding")
            age = item.get("age")
            faces.append(
                Face(
                    bbox=(
                        float(np.clip(x1, 0, width)),
                        float(np.clip(y1, 0, height)),
                        float(np.clip(x2, 0, width)),
                        float(np.clip(y2, 0, height)),
                    ),
                    kps=None
                    if item.get("kps") is None
                    else np.asarray(item.kps, dtype=np.float32).reshape(5, 2),
                    score=float(item.det_score),
                    embedding=None if embedding is None else l2_normalize(embedding),
                    age=None if age is None else float(age),
                    gender=_gender_word(item.get("gender")),
                )
            )
        return sort_largest_first(faces)
