"""A face analyzer that remembers the faces of the images it analysed last.

A generation analyses each reference photo for the prompt's face attributes and again for its embedding, and a
visitor who tries other seeds sends the same photos again: remembered by content, each photo is analysed once.
Faces are biometric data: they are kept in memory only, for a bounded time, and ``forget()`` drops them all.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from idglow.faces.base import Face, FaceAnalyzer, face_backend_name
from idglow.faces.match import analyzer_match_threshold


class RememberedFaces:
    """``analyzer`` behind the ``FaceAnalyzer`` protocol, with the faces of the last ``size`` images it analysed
    kept by the images' pixels (an image sent again, as an array, a PIL image or a file, is not analysed again),
    each for at most ``max_age_s`` seconds (None: no limit). Each call gets faces of its own. Other attributes
    (e.g. ``close``) are the analyzer's."""

    def __init__(self, analyzer: FaceAnalyzer, size: int = 64, max_age_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if size < 1:
            raise ValueError(f"size={size} must be at least 1")
        self.analyzer = analyzer
        self.size = size
        self.max_age_s = max_age_s
        self.embedding_dim = analyzer.embedding_dim
        self._clock = clock
        self._faces: OrderedDict[tuple, tuple[float, list[Face]]] = OrderedDict()
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
            self._drop_old()
            kept = self._faces.get(key)
            if kept is not None:
                self._faces.move_to_end(key)
        if kept is None:
            kept = (self._clock(), list(self.analyzer.detect(array)))
            with self._lock:
                self._faces[key] = kept
                while len(self._faces) > self.size:
                    self._faces.popitem(last=False)
        return [copy.copy(face) for face in kept[1]]  # callers may move a face's box; the kept one stays as found

    def forget(self) -> None:
        """Drop every remembered face."""
        with self._lock:
            self._faces.clear()

    def _drop_old(self) -> None:
        if self.max_age_s is None:
            return
        now = self._clock()
        for key in [k for k, (at, _) in self._faces.items() if now - at > self.max_age_s]:
            del self._faces[key]
