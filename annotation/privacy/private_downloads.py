"""Private downloads: files served to one browser and signed-in session only, until they expire (researchers'
exports). A browser is known by an unguessable HttpOnly cookie (:data:`BROWSER_COOKIE`) that the route guard
(:mod:`annotation.ui.route_guard`) gives it and checks."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

BROWSER_COOKIE = "idglow_browser"
_BROWSER_ID = re.compile(r"[A-Za-z0-9_-]{32,128}")
DEFAULT_DOWNLOAD_TTL_S = 3600.0


def browser_id(cookies: dict | None) -> str | None:
    """The browser's id from its cookies, or None when it sent none (or one too short to be unguessable)."""
    value = (cookies or {}).get(BROWSER_COOKIE)
    return value if isinstance(value, str) and _BROWSER_ID.fullmatch(value) else None


@dataclass(frozen=True)
class _Grant:
    browser: str | None  # None: no browser can fetch it (an API call that sent no browser cookie)
    expires: float
    allowed: Callable[[], bool]  # is the session that made it still signed in with the right role?


class PrivateDownloads:
    """Files served to one browser and signed-in session only, until they expire (researchers' exports).

    :meth:`publish` copies each file into the web server's temporary area (where Gradio serves it from, so Gradio
    does not make a public copy of its own) and records who may fetch that copy: the browser that asked for it
    (its :data:`BROWSER_COOKIE`), while ``allowed()`` holds (the session is still signed in with its role). At
    expiry the copy is deleted from disk, whether or not anyone asks for it again.
    """

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._lock = threading.Lock()
        self._grants: dict[str, list[_Grant]] = {}

    def publish(self, paths: list[Path], *, browser: str | None, allowed: Callable[[], bool],
                ttl_s: float = DEFAULT_DOWNLOAD_TTL_S, cache_dir: str | os.PathLike[str] | None = None) -> list[str]:
        """The served copies of ``paths`` (inside ``cache_dir``, by default the web server's temporary area),
        reachable only by ``browser`` while ``allowed()`` holds, for ``ttl_s`` seconds."""
        from gradio.processing_utils import save_file_to_cache
        from gradio.utils import get_upload_folder

        cache_dir = get_upload_folder() if cache_dir is None else cache_dir
        if ttl_s <= 0:
            raise ValueError(f"download lifetime {ttl_s} s must be positive")
        served = [str(Path(save_file_to_cache(path, str(cache_dir))).resolve()) for path in paths]
        grant = _Grant(browser, self.clock() + ttl_s, allowed)
        with self._lock:
            for path in served:
                self._grants.setdefault(path, []).append(grant)
        timer = threading.Timer(ttl_s + 0.05, self.expire)
        timer.daemon = True
        timer.start()
        return served

    def is_private(self, path: str | os.PathLike[str]) -> bool:
        with self._lock:
            return str(Path(path).resolve()) in self._grants

    def allows(self, path: str | os.PathLike[str], browser: str | None) -> bool:
        """Whether this browser may fetch this private file now (False once it expired)."""
        self.expire()
        with self._lock:
            grants = list(self._grants.get(str(Path(path).resolve()), ()))
        return browser is not None and any(g.browser == browser and _holds(g.allowed) for g in grants)

    def expire(self, now: float | None = None) -> int:
        """Forget the grants past their expiry and delete the copies nobody may fetch any more; returns how
        many files were deleted."""
        now = self.clock() if now is None else now
        gone = []
        with self._lock:
            for path, grants in list(self._grants.items()):
                left = [g for g in grants if g.expires > now]
                if left:
                    self._grants[path] = left
                else:
                    del self._grants[path]
                    gone.append(Path(path))
        removed = 0
        for path in gone:
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            try:
                path.parent.rmdir()
            except OSError:
                pass
        if removed:
            logger.info("deleted %d expired private download(s)", removed)
        return removed


def _holds(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:  # a failing check never opens a file
        logger.exception("private download check failed")
        return False


DOWNLOADS = PrivateDownloads()
