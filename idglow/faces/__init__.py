"""Face detection, embedding, alignment and matching. Backends load lazily (dlib and insightface are heavy)."""

from __future__ import annotations

import importlib
from typing import Any

from idglow.faces.base import Face, FaceAnalyzer, FaceMatch, l2_normalize, sort_largest_first
from idglow.faces.match import match_faces

_LAZY = {
    "DlibAnalyzer": "idglow.faces.dlib_backend",
    "InsightFaceAnalyzer": "idglow.faces.insightface_backend",
    "align_crop": "idglow.faces.align",
    "build_tiny_insightface_pack": "idglow.faces.tiny_pack",
}

__all__ = ["Face", "FaceAnalyzer", "FaceMatch", "l2_normalize", "match_faces", "sort_largest_first", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'idglow.faces' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
