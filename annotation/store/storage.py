"""The data dir's layout and its files.

``images/<sha256[:2]>/<sha256>.png`` holds content-addressed images; ``downloads/<visitor_id>/`` the files a
visitor was offered to download; ``tmp/`` is the web server's temporary area (uploads as received and the
copies of every file it served).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

IMAGES_DIR = "images"
DOWNLOADS_DIR = "downloads"
TEMP_DIR = "tmp"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


@dataclass(frozen=True)
class StoredImage:
    """An image in the data dir, addressed by the SHA-256 of its PNG bytes."""

    sha256: str
    path: str  # relative to the data dir, POSIX separators
    width: int
    height: int


def encode_png(image: Any) -> tuple[bytes, int, int]:
    """PNG bytes (no metadata) of a PIL image, an RGB uint8 array, encoded bytes or a file path."""
    if isinstance(image, (bytes, bytearray, str, Path)):
        from idglow.images import decode_image

        image = decode_image(bytes(image) if isinstance(image, bytearray) else image)
    elif isinstance(image, np.ndarray):
        from idglow.images import to_pil

        image = to_pil(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"cannot store an image of type {type(image).__name__}")
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    clean = Image.new(image.mode, image.size)
    clean.paste(image)
    buf = io.BytesIO()
    clean.save(buf, format="PNG")
    return buf.getvalue(), image.width, image.height


def store_image(data_dir: str | os.PathLike[str], image: Any) -> StoredImage:
    """Write ``image`` once under its content hash (an existing file is reused) and describe it."""
    data, width, height = encode_png(image)
    sha = hashlib.sha256(data).hexdigest()
    rel = f"{IMAGES_DIR}/{sha[:2]}/{sha}.png"
    target = Path(data_dir) / rel
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{sha}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    return StoredImage(sha256=sha, path=rel, width=width, height=height)


def image_file(data_dir: str | os.PathLike[str], path: str) -> Path:
    """Absolute location of a stored image path."""
    return Path(data_dir) / path


def remove_files(data_dir: str | os.PathLike[str], paths: set[str]) -> int:
    """Delete stored files (paths relative to the data dir); returns how many were removed."""
    removed = 0
    for rel in sorted(paths):
        target = image_file(data_dir, rel)
        try:
            target.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def temp_area(data_dir: str | os.PathLike[str]) -> Path:
    """The web server's temporary area inside the data dir (``GRADIO_TEMP_DIR`` points here)."""
    return (Path(data_dir) / TEMP_DIR).resolve()


def visitor_downloads(data_dir: str | os.PathLike[str], visitor_id: str) -> Path:
    """The folder of a visitor's download files."""
    if not visitor_id or "/" in visitor_id or visitor_id in (".", ".."):
        raise ValueError(f"invalid visitor id {visitor_id!r}")
    return Path(data_dir) / DOWNLOADS_DIR / visitor_id


def pixel_digest(image: Any) -> str:
    """sha256 of an image's size, mode and pixels (the same picture in PNG, WebP or memory has one digest)."""
    if not isinstance(image, Image.Image):
        with Image.open(image) as opened:
            opened.load()
            image = opened.copy()
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    if image.mode == "RGBA" and image.getextrema()[3] == (255, 255):
        image = image.convert("RGB")
    sha = hashlib.sha256(f"{image.width}x{image.height}:{image.mode}:".encode())
    sha.update(image.tobytes())
    return sha.hexdigest()
