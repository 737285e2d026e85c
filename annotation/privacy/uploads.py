"""Uploads: safe decoding and the registry of raw uploads in the web server's temporary area.

Uploads are decoded by :func:`decode_upload` (content-based JPEG/PNG/WebP/HEIC allowlist, pixel caps, size cap,
camera photos decoded at reduced size, EXIF orientation applied, then every piece of metadata dropped) before
anything is stored. Nothing here logs an address or any other detail about a visitor.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from idglow.errors import InputError
from idglow.images import ALLOWED_FORMATS

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_UPLOAD_PIXELS = 40_000_000
DEFAULT_MAX_PHOTO_PIXELS = 64_000_000
DEFAULT_MAX_SIDE = 2048
PHOTO_FORMATS = ("JPEG", "MPO", "HEIF")  # camera formats: JPEG and MPO decode at reduced size (draft mode)
DRAFT_FORMATS = ("JPEG", "MPO")  # MPO: a phone's multi-picture JPEG (HDR gain map, depth); its first frame is used
DECODE_BUDGET_BYTES = 768 * 1024 * 1024  # decoded pixels of all uploads being decoded at once
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
    except ValueError as err:  # Pillow refuses a text or colour-profile chunk that decompresses past 1 MB
        raise InputError(f"{display}: the image carries a text or colour-profile block that is too large "
                         f"({err}); please save it again without metadata") from None
    except (OSError, SyntaxError) as err:
        raise InputError(f"{display}: the image file is damaged or truncated ({err})") from None
    width, height = probe.size
    cap = limits.max_photo_pixels if probe.format in PHOTO_FORMATS else limits.max_pixels
    if width * height > cap:
        raise InputError(f"{display}: {width}x{height} pixels is over the limit of {cap:,} pixels")
    return probe


def _reduced(probe, max_side: int):
    """Decode ``probe`` with its longest side at most ``max_side`` (JPEG: decoded at 1/2, 1/4 or 1/8 scale)."""
    orientation = probe.getexif().get(0x0112, 1)
    if probe.format in DRAFT_FORMATS:
        probe.draft("RGB", (max_side, max_side))
    with warnings.catch_warnings(), DECODING.reserved(decode_cost(probe)):
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        probe.load()
        image = probe if probe.mode in _RESIZED_AS_IS else probe.convert("RGB")
        if max(image.size) > max_side:  # reduced before any conversion: the full-size copy is never doubled
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        image = _eight_bit(image)
        image = image if image.mode == "RGB" else image.convert("RGB")
    method = _TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


_RESIZED_AS_IS = ("RGB", "RGBA", "L", "LA", "I", "I;16", "F")


def _eight_bit(image):
    """16- and 32-bit greyscale (PNG ``I;16``, ``I``) scaled to 8 bits; Pillow's own conversion clips them white."""
    if image.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return image
    import numpy as np

    values = np.asarray(image).astype(np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8), mode="L")


def decode_cost(probe) -> int:
    """Bytes a full decode of ``probe`` may hold at its peak (its pixels, converted once), from its header only."""
    width, height = probe.size
    if probe.format in DRAFT_FORMATS:  # decoded at 1/8 scale at most, in 3 bands
        scale = 1
        while scale < 8 and max(width, height) // (scale * 2) >= DEFAULT_MAX_SIDE:
            scale *= 2
        width, height = -(-width // scale), -(-height // scale)
    bands = max(len(probe.getbands()), 3)
    depth = 2 if probe.mode.startswith("I;16") else 4 if probe.mode in ("I", "F") else 1
    return width * height * bands * depth * 2


class DecodeBudget:
    """Bytes of decoded pixels that uploads may hold at once: a decode waits for its share, so that four large
    photos decoded together cost no more than the budget."""

    def __init__(self, budget: int = DECODE_BUDGET_BYTES):
        self.budget = budget
        self.held = 0
        self._cond = threading.Condition()

    def reserved(self, cost: int):
        """A context manager holding ``min(cost, budget)`` bytes of the budget while it runs."""
        import contextlib

        share = min(cost, self.budget)

        @contextlib.contextmanager
        def hold():
            with self._cond:
                self._cond.wait_for(lambda: self.held + share <= self.budget)
                self.held += share
            try:
                yield
            finally:
                with self._cond:
                    self.held -= share
                    self._cond.notify_all()

        return hold()


DECODING = DecodeBudget()


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


class UploadRegistry:
    """Raw uploads as the web server received them (original bytes, metadata included), by path.

    The web layer records each upload here; :func:`discard_upload` deletes only recorded uploads inside a
    watched temporary area (never a served copy or another file a caller names), and the sweeper removes
    recorded uploads that nobody processed within minutes. The web server stores identical uploads (same bytes,
    same name) at one path, so each upload is one record at that path: the file goes once every record has
    been processed or has expired.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._uploads: dict[str, list[float]] = {}  # path → the time of each upload stored there
        self._roots: set[Path] = set()

    def watch(self, root: str | os.PathLike[str]) -> None:
        """Guard this temporary area: files in it are deleted on request only if they were uploads."""
        with self._lock:
            self._roots.add(Path(root).resolve())

    def root_of(self, path: str | os.PathLike[str]) -> Path | None:
        """The watched temporary area that holds ``path``, or None."""
        resolved = Path(path).resolve()
        with self._lock:
            return next((root for root in self._roots if resolved.is_relative_to(root)), None)

    def covers(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` lies in a watched temporary area."""
        return self.root_of(path) is not None

    def add(self, paths: list[str], when: float | None = None) -> None:
        """Record one upload at each of ``paths`` (received at ``when``, default now)."""
        when = time.time() if when is None else when
        with self._lock:
            for p in paths:
                self._uploads.setdefault(str(Path(p).resolve()), []).append(when)

    def is_upload(self, path: str | os.PathLike[str]) -> bool:
        """Whether an upload not yet processed is recorded at ``path``."""
        with self._lock:
            return str(Path(path).resolve()) in self._uploads

    def release(self, path: str | os.PathLike[str]) -> bool:
        """One upload at ``path`` was processed (the newest record goes); True when none is left, so the file
        may be deleted."""
        key = str(Path(path).resolve())
        with self._lock:
            times = self._uploads.get(key)
            if times:
                times.remove(max(times))
            if not times:
                self._uploads.pop(key, None)
                return True
            return False

    def forget(self, path: str | os.PathLike[str]) -> None:
        """Drop every record at ``path``."""
        with self._lock:
            self._uploads.pop(str(Path(path).resolve()), None)

    def older_than(self, cutoff: float) -> list[str]:
        """The paths whose every recorded upload was received before ``cutoff``."""
        with self._lock:
            return [p for p, times in self._uploads.items() if max(times) < cutoff]


def delete_file(path: Path) -> bool:
    """Delete a file; False when it was already gone or could not be deleted (logged)."""
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    except OSError as err:  # pragma: no cover - permissions on an odd temp dir
        logger.warning("could not delete a temporary file: %s", err.strerror)
        return False


def remove_empty_folder(folder: Path) -> None:
    """Remove ``folder`` if it is empty."""
    try:
        folder.rmdir()
    except OSError:
        pass


STRAY_MIN_AGE_S = 10.0  # an upload being received starts as an empty file at the same place


def remove_stray_temp_files(root: str | os.PathLike[str], now: float | None = None,
                            min_age_s: float = STRAY_MIN_AGE_S) -> int:
    """Delete the empty ``tmp*`` files the web server leaves at the top of its temporary area (one per
    processed upload) once they are ``min_age_s`` old (younger ones may be uploads still arriving); returns how
    many were removed."""
    now = time.time() if now is None else now
    removed = 0
    root = Path(root)
    if not root.is_dir():
        return 0
    for entry in root.iterdir():
        try:
            info = entry.stat()
            stray = entry.name.startswith("tmp") and entry.is_file() and info.st_size == 0
        except OSError:
            continue
        removed += stray and now - info.st_mtime >= min_age_s and delete_file(entry)
    return removed


def discard_upload(path: str | os.PathLike[str] | None, registry: UploadRegistry) -> bool:
    """Delete the web server's copy of an upload (it still holds the original metadata) once it was decoded.

    Inside a watched temporary area only recorded uploads are deleted: a caller who names a served file or
    any other file there as "their upload" deletes nothing, and a file uploaded again (by another visitor) stays
    until that upload is processed too. Returns whether a file was deleted.
    """
    if not path:
        return False
    target = Path(path)
    root = registry.root_of(target)
    if root is None:
        return delete_file(target)
    if not registry.is_upload(target):
        logger.warning("kept a temporary-area file that was not uploaded as a file to process")
        return False
    if not registry.release(target):
        return False  # the same file was uploaded again and is still to be processed
    deleted = delete_file(target)
    remove_empty_folder(target.parent)
    remove_stray_temp_files(root)
    return deleted
