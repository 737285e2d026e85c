"""Face records and the analyzer protocol shared by every backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

# Detection score thresholds: a detection scoring below its backend's threshold is not a face, wherever faces are
# found (reference photos, generated images, training data, prompts). Override with ``--det-threshold`` on the
# commands (``ModelSettings.det_threshold``) or the analyzer's own argument.
#
# dlib (HOG detector): the score is the SVM margin; dlib's own default, 0, keeps the mission patch on
# scikit-image's astronaut (score 0.04 in the bundled sample portrait, "49 male") while the weakest real face of
# the bundled photos scores 0.21 (insightface's t1.jpg; the six sample portraits score 0.43-2.6): 0.1 lies
# between. dlib's CNN detector gives a confidence, thresholded at the same value.
DLIB_DETECTION_THRESHOLD = 0.1
# insightface (SCRFD / RetinaFace): the score is a probability; 0.5 is insightface's own default.
INSIGHTFACE_DETECTION_THRESHOLD = 0.5


@dataclass
class Face:
    """One detected face. bbox is (x1, y1, x2, y2) in pixels; kps are 5 points (eyes, nose, mouth corners)
    as an array (5, 2); embedding is L2-normalised. Fields a backend cannot provide are None."""

    bbox: tuple[float, float, float, float]
    kps: np.ndarray | None = None
    score: float = 1.0
    embedding: np.ndarray | None = None
    age: float | None = None
    gender: str | None = None

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.bbox
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    def to_dict(self, with_embedding: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bbox": [round(float(v), 2) for v in self.bbox],
            "score": round(float(self.score), 4),
            "age": None if self.age is None else round(float(self.age), 1),
            "gender": self.gender,
        }
        if self.kps is not None:
            out["kps"] = np.round(np.asarray(self.kps, dtype=float), 2).tolist()
        if with_embedding and self.embedding is not None:
            out["embedding"] = np.asarray(self.embedding, dtype=float).tolist()
        return out


@runtime_checkable
class FaceAnalyzer(Protocol):
    """Anything that finds faces in an RGB image and embeds them."""

    embedding_dim: int

    def detect(self, image: Any) -> list[Face]:
        """Faces in ``image`` (PIL image, path or uint8 RGB array), largest first."""
        ...


def face_backend_name(analyzer) -> str:
    """The name embeddings are recorded under (``dlib``, ``insightface``): ``analyzer.backend_name`` when set,
    else the class name without ``Analyzer``. Embeddings of different backends are not comparable."""
    return getattr(analyzer, "backend_name", None) or type(analyzer).__name__.removesuffix("Analyzer").lower()


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``x`` as float32 scaled to unit L2 norm (unchanged direction; ``eps`` guards a zero vector)."""
    x = np.asarray(x, dtype=np.float32)
    return x / max(float(np.linalg.norm(x)), eps)


def sort_largest_first(faces: list[Face]) -> list[Face]:
    """The faces by box area, largest first."""
    return sorted(faces, key=lambda f: f.area, reverse=True)


@dataclass
class FaceMatch:
    """Result of matching generated faces to reference identities (slot order).

    similarity[i]: cosine similarity of slot i's matched face (0 when missing). bboxes[i]: that face's box in
    the generated image or None. face_of_slot[i]: index into the generated faces or None. missing: slots
    with no matched face. extra: generated faces matched to no slot. duplicates: slots that a second,
    unmatched face also resembles above the duplicate threshold. ages[i]: the apparent age (years) of slot i's
    matched face, where the face backend estimates one (None when missing or not estimated).
    """

    similarity: list[float]
    bboxes: list[tuple[float, float, float, float] | None]
    face_of_slot: list[int | None]
    missing: list[int] = field(default_factory=list)
    extra: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    ages: list[float | None] = field(default_factory=list)

    @property
    def mean_similarity(self) -> float:
        return float(np.mean(self.similarity)) if self.similarity else 0.0

    @property
    def min_similarity(self) -> float:
        return float(np.min(self.similarity)) if self.similarity else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "similarity": [round(float(s), 4) for s in self.similarity],
            "bboxes": [None if b is None else [round(float(v), 2) for v in b] for b in self.bboxes],
            "face_of_slot": list(self.face_of_slot),
            "missing": list(self.missing),
            "extra": list(self.extra),
            "duplicates": list(self.duplicates),
            "ages": [None if a is None else round(float(a), 1) for a in self.ages],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaceMatch:
        return cls(
            similarity=list(data["similarity"]),
            bboxes=[None if b is None else tuple(b) for b in data["bboxes"]],
            face_of_slot=list(data["face_of_slot"]),
            missing=list(data.get("missing", [])),
            extra=list(data.get("extra", [])),
            duplicates=list(data.get("duplicates", [])),
            ages=list(data.get("ages", [])),
        )
