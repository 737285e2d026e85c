"""Visitor privacy: safe upload decoding, visitor ids and the retention sweeper.

Uploads are decoded with :func:`idglow.images.decode_image` (content-based JPEG/PNG/WebP allowlist, pixel
cap, size cap, EXIF orientation applied, then every piece of metadata dropped) before anything is stored.
The sweeper deletes generations and reference photos past their ``expires_at`` (files and rows). Nothing
here logs an address or any other detail about a visitor.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from idglow.errors import InputError
from idglow.images import ALLOWED_FORMATS, decode_image

logger = logging.getLogger(__name__)

DEFAULT_RETENTION = timedelta(hours=24)
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_UPLOAD_PIXELS = 40_000_000


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS
    allowed_formats: tuple[str, ...] = ALLOWED_FORMATS

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise InputError(f"upload limits must be positive, got {self.max_bytes} bytes / {self.max_pixels} px")


def decode_upload(source: str | os.PathLike[str] | bytes, limits: UploadLimits = UploadLimits(),
                  name: str | None = None) -> Any:
    """An uploaded file → upright RGB PIL image with no metadata, or InputError naming the file (by its
    upload name, never its server path)."""
    display = name or (Path(source).name if isinstance(source, (str, os.PathLike)) else "upload")
    try:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise InputError(f"{display}: the upload is missing; please upload it again")
            size = path.stat().st_size
            if size > limits.max_bytes:
                raise InputError(
                    f"{display}: file is {size / 2**20:.1f} MB, over the {limits.max_bytes / 2**20:.0f} MB limit"
                )
            data = path.read_bytes()
        else:
            data = bytes(source)
        return decode_image(data, max_pixels=limits.max_pixels, max_bytes=limits.max_bytes,
                            allowed_formats=limits.allowed_formats)
    except InputError as err:
        message = str(err)
        if message.startswith("image:"):
            message = f"{display}:{message[len('image:'):]}"
        raise InputError(message) from None


def discard_upload(path: str | os.PathLike[str] | None) -> None:
    """Delete the web server's temporary copy of an upload (it still holds the original metadata)."""
    if not path:
        return
    try:
        Path(path).unlink()
    except FileNotFoundError:
        pass
    except OSError as err:  # pragma: no cover - permissions on an odd temp dir
        logger.warning("could not delete a temporary upload: %s", err.strerror)


def new_visitor_id() -> str:
    """A random, unguessable id for one visitor session (kept server-side only)."""
    return secrets.token_hex(16)


def expiry(now: datetime, retention: timedelta) -> datetime:
    if now.tzinfo is None:
        raise InputError(f"now={now!r} must be timezone-aware")
    return now + retention


class RetentionSweeper:
    """Deletes expired generations and reference photos (rows and files) every ``interval``.

    ``sweep_once()`` runs one pass (tests call it with a chosen ``now``); ``start()`` runs passes in a
    daemon thread until ``stop()``.
    """

    def __init__(self, sessions, data_dir: str | os.PathLike[str], *, interval: timedelta = timedelta(minutes=10)):
        if interval.total_seconds() <= 0:
            raise InputError(f"sweep interval must be positive, got {interval}")
        self.sessions = sessions
        self.data_dir = Path(data_dir)
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep_once(self, now: datetime | None = None):
        from annotation.candidates import sweep_expired
        from db.types import utcnow

        with self.sessions() as session:
            return sweep_expired(session, now or utcnow(), self.data_dir)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep_once()
            except Exception:  # keep sweeping; the next pass retries
                logger.exception("retention sweep failed")
            self._stop.wait(self.interval.total_seconds())

    def start(self) -> RetentionSweeper:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="idglow-retention", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
