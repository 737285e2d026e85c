"""A face analyzer that runs in a process of its own.

dlib's detector and recognizer hold Python's interpreter lock for the whole call (about 75 ms of a 100 ms
detection on a 256-pixel portrait), so in a web server every face analysis stalls every other request for that
long. :class:`AnalyzerProcess` keeps the analyzer in a child process: the caller only waits, and waiting leaves
the interpreter to the other threads. Calls are served one at a time, as one analyzer serves them anyway.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from idglow.faces.base import Face, FaceAnalyzer

_ANALYZER: FaceAnalyzer | None = None  # the child's analyzer


def _start(factory: Callable[[], FaceAnalyzer], parent: int) -> None:
    global _ANALYZER
    threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="idglow-parent-watch").start()
    _ANALYZER = factory()


def _exit_with(parent: int) -> None:
    """End the child within a second of its parent, also when the parent was killed and could not say so."""
    import time

    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _describe() -> dict[str, Any]:
    from idglow.faces.base import face_backend_name
    from idglow.faces.match import analyzer_match_threshold

    return {
        "embedding_dim": int(_ANALYZER.embedding_dim),
        "backend_name": face_backend_name(_ANALYZER),
        "same_person_threshold": analyzer_match_threshold(_ANALYZER),
        "estimates_age": bool(getattr(_ANALYZER, "estimates_age", False)),
        "description": repr(_ANALYZER),
    }


def _detect(array) -> list[Face]:
    return _ANALYZER.detect(array)


class AnalyzerProcess:
    """The analyzer ``factory()`` builds, run in a child process (``spawn``), behind the ``FaceAnalyzer``
    protocol. ``factory`` must be picklable (a module-level function or a ``functools.partial`` of one).

    Images are decoded here and sent as uint8 RGB arrays. If the child dies (e.g. killed for memory), the call
    that was running fails with a ``RuntimeError`` and the next call starts a new child. The child ends with its
    parent, also when the parent is killed."""

    def __init__(self, factory: Callable[[], FaceAnalyzer]):
        self._factory = factory
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        info = self._submit(_describe).result()
        self.embedding_dim: int = info["embedding_dim"]
        self.backend_name: str = info["backend_name"]
        self.same_person_threshold: float = info["same_person_threshold"]
        self.estimates_age: bool = info["estimates_age"]
        self._description = info["description"]
        atexit.register(self.close)

    def __repr__(self) -> str:
        return f"AnalyzerProcess({self._description})"

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                                   initargs=(self._factory, os.getpid()))

    def detect(self, image: Any) -> list[Face]:
        """Faces in ``image`` (PIL image, path, bytes or uint8 RGB array), largest first."""
        from idglow.images import to_rgb_array

        array = to_rgb_array(image)
        future = self._submit(_detect, array)
        try:
            return future.result()
        except BrokenProcessPool:  # it stopped during this call; the image may be why, so it is not retried
            raise RuntimeError("face analysis stopped during this photo; please try again or use another photo"
                               ) from None

    @property
    def worker_pid(self) -> int:
        """The process id of the child that analyses faces now."""
        return self._submit(os.getpid).result()

    def _submit(self, fn, *args):
        with self._lock:
            try:
                return self._pool.submit(fn, *args)
            except BrokenProcessPool:  # the child had stopped between calls: start another and go on
                self._pool.shutdown(wait=False)
                self._pool = self._new_pool()
                return self._pool.submit(fn, *args)

    def close(self) -> None:
        """Stop the child process (also called at exit)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
