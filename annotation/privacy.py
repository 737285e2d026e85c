"""Visitor privacy: safe upload decoding, visitor ids and the retention sweeper.

Uploads are decoded by :func:`decode_upload` (content-based JPEG/PNG/WebP/HEIC allowlist, pixel caps, size cap,
camera photos decoded at reduced size, EXIF orientation applied, then every piece of metadata dropped) before
anything is stored.
The sweeper deletes generations and reference photos past their ``expires_at`` (files and rows). Nothing
here logs an address or any other detail about a visitor.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import threading
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from idglow.errors import InputError
from idglow.images import ALLOWED_FORMATS

logger = logging.getLogger(__name__)

DEFAULT_RETENTION = timedelta(hours=24)
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_UPLOAD_PIXELS = 40_000_000
DEFAULT_MAX_PHOTO_PIXELS = 64_000_000
DEFAULT_MAX_SIDE = 2048
PHOTO_FORMATS = ("JPEG", "HEIF")  # camera formats: JPEG decodes at reduced size (draft mode)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif")


def heif_supported() -> bool:
    """Whether HEIC/HEIF photos can be read (``pillow-heif`` installed); registers its Pillow opener once."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may be. max_bytes: file size. max_pixels: pixels of an image decoded at full size
    (PNG, WebP). max_photo_pixels: pixels of a camera photo (JPEG, decoded at reduced size; HEIC).
    max_side: the decoded image is reduced to this longest side (faces are found and cropped on it)."""

    max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS
    allowed_formats: tuple[str, ...] = ALLOWED_FORMATS + ("HEIF",)
    max_photo_pixels: int = DEFAULT_MAX_PHOTO_PIXELS
    max_side: int = DEFAULT_MAX_SIDE

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1 or self.max_photo_pixels < 1:
            raise InputError(f"upload limits must be positive, got {self.max_bytes} bytes / {self.max_pixels} px / "
                             f"{self.max_photo_pixels} px")
        if self.max_side < 64:
            raise InputError(f"max_side {self.max_side} must be at least 64 pixels")


def _read_upload(source: str | os.PathLike[str] | bytes, limits: UploadLimits, display: str) -> bytes:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{display}: the upload is missing; please upload it again")
        size = path.stat().st_size
    else:
        size = len(source)
    if size > limits.max_bytes:
        raise InputError(
            f"{display}: file is {size / 2**20:.1f} MB, over the {limits.max_bytes / 2**20:.0f} MB limit; "
            "please send a smaller copy (for example the phone's \"large\" or \"medium\" export size)"
        )
    return Path(source).read_bytes() if isinstance(source, (str, os.PathLike)) else bytes(source)


def _is_heif(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


def _open(data: bytes, limits: UploadLimits, display: str):
    formats = [f for f in limits.allowed_formats if f != "HEIF" or heif_supported()]
    if _is_heif(data) and "HEIF" not in formats:
        raise InputError(f"{display}: HEIC photos (the iPhone default) cannot be read on this server; please "
                         "send it as JPEG (on an iPhone: Settings → Camera → Formats → Most Compatible)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the caps below decide
            probe = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError:
        raise InputError(f"{display}: image is too large to decode safely (decompression bomb)") from None
    except UnidentifiedImageError:
        shown = "/".join("HEIC" if f == "HEIF" else f for f in formats)
        raise InputError(f"{display}: not a {shown} image") from None
    width, height = probe.size
    cap = limits.max_photo_pixels if probe.format in PHOTO_FORMATS else limits.max_pixels
    if width * height > cap:
        raise InputError(f"{display}: {width}x{height} pixels is over the limit of {cap:,} pixels")
    return probe


def _reduced(probe, max_side: int):
    """Decode ``probe`` with its longest side at most ``max_side`` (JPEG: decoded at 1/2, 1/4 or 1/8 scale)."""
    orientation = probe.getexif().get(0x0112, 1)
    if probe.format == "JPEG":
        probe.draft("RGB", (max_side, max_side))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        probe.load()
    image = probe if probe.mode == "RGB" else probe.convert("RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    method = _TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def decode_upload(source: str | os.PathLike[str] | bytes, limits: UploadLimits = UploadLimits(),
                  name: str | None = None) -> Any:
    """An uploaded file → upright RGB PIL image (longest side at most ``limits.max_side``) with no metadata,
    or InputError naming the file (by its upload name, never its server path).

    Content decides the format (JPEG, PNG, WebP, and HEIC when ``pillow-heif`` is installed). Camera photos up
    to ``max_photo_pixels`` are accepted (JPEG is decoded at reduced size); other images up to ``max_pixels``;
    a header that claims more is refused before any pixel is decoded.
    """
    display = name or (Path(source).name if isinstance(source, (str, os.PathLike)) else "upload")
    data = _read_upload(source, limits, display)
    probe = _open(data, limits, display)
    try:
        image = _reduced(probe, limits.max_side)
    except (OSError, SyntaxError, ValueError, RuntimeError) as err:
        raise InputError(f"{display}: the image file is damaged or truncated ({err})") from None
    clean = Image.new("RGB", image.size)
    clean.paste(image)
    return clean


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
