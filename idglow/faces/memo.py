"""A face analyzer that remembers the faces of the images it analysed last.

A generation analyses each reference photo for the prompt's face attributes and again for its embedding, and a
visitor who tries other seeds sends the same photos again: remembered by content, each photo is analysed once.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from idglow.faces.base import Face, FaceAnalyzer, face_backend_name
from idglow.faces.match import analyzer_match_threshold


class RememberedFaces:
    """``analyzer`` behind the ``FaceAnalyzer`` protocol, with the faces of the last ``size`` images it analysed
    kept by the images' pixels (an image sent again, as an array, a PIL image or a file, is not analysed again).
    Each call gets faces of its own. Other attributes (e.g. ``close``) are the analyzer's."""

    def __init__(self, analyzer: FaceAnalyzer, size: int = 64):
        if size < 1:
            raise ValueError(f"size={size} must be at least 1")
        self.analyzer = analyzer
        self.size = size
        self.embedding_dim = analyzer.embedding_dim
        self._faces: OrderedDict[tuple, list[Face]] = OrderedDict()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if name == "analyzer":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.analyzer, name)

    @property
    def backend_name(self) -> str:
        return face_backend_name(self.analyzer)

    @property
    def same_person_threshold(self) -> float:
        return analyzer_match_threshold(self.analyzer)

    def __repr__(self) -> str:
        return f"RememberedFaces({self.analyzer!r}, size={self.size})"

    def detect(self, image: Any) -> list[Face]:
        """Faces in ``image`` (PIL image, path, bytes or uint8 RGB array), largest first."""
        from idglow.images import to_rgb_array

        array = np.ascontiguousarray(to_rgb_array(image))
        key = (array.shape, hashlib.blake2b(array.data, digest_size=16).digest())
        with self._lock:
            faces = self._faces.get(key)
            if faces is not None:
                self._faces.move_to_end(key)
        if faces is None:
            faces = list(self.analyzer.detect(array))
            with self._lock:
                self._faces[key] = faces
                while len(self._faces) > self.size:
                    self._faces.popitem(last=False)
        return [copy.copy(face) for face in faces]  # callers may move a face's box; the kept one stays as found
