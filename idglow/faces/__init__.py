"""Face detection, embedding, alignment and matching. Backends load lazily (dlib and insightface are heavy)."""

from __future__ import annotations

from idglow._lazy import lazy_getattr
from idglow.faces.base import Face, FaceAnalyzer, FaceMatch, l2_normalize, sort_largest_first
from idglow.faces.match import (
    SAME_PERSON_THRESHOLDS,
    analyzer_match_threshold,
    match_faces,
    same_person_threshold,
)

_LAZY = {
    "AnalyzerProcess": "idglow.faces.process",
    "GroupBinding": "idglow.faces.binding",
    "bind_group": "idglow.faces.binding",
    "copy_paste": "idglow.faces.binding",
    "identity_confusion": "idglow.faces.binding",
    "places_by_boxes": "idglow.faces.binding",
    "places_by_order": "idglow.faces.binding",
    "group_report": "idglow.faces.scoring",
    "prompt_positions": "idglow.faces.scoring",
    "reference_embedding": "idglow.faces.scoring",
    "score_group": "idglow.faces.scoring",
    "DlibAnalyzer": "idglow.faces.dlib_backend",
    "RememberedFaces": "idglow.faces.memo",
    "InsightFaceAnalyzer": "idglow.faces.insightface_backend",
    "align_crop": "idglow.faces.align",
    "build_tiny_insightface_pack": "idglow.faces.tiny_pack",
}

__all__ = [
    "SAME_PERSON_THRESHOLDS", "Face", "FaceAnalyzer", "FaceMatch", "analyzer_match_threshold", "l2_normalize",
    "match_faces", "same_person_threshold", "sort_largest_first", *_LAZY,
]


__getattr__ = lazy_getattr("idglow.faces", _LAZY, globals())
