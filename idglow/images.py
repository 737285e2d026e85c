"""Safe image decoding shared by the CLI, the pipeline and the app.

Images are identified by content (never by file name), decoded under a pixel cap, turned upright from their
EXIF orientation and returned as plain RGB with no metadata attached.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from idglow.errors import InputError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 20 * 1024 * 1024


def _name(source: Any) -> str:
    return str(source) if isinstance(source, (str, Path)) else "image"


def decode_image(
    source: str | Path | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allowed_formats: tuple[str, ...] = ALLOWED_FORMATS,
) -> Image.Image:
    """Decode a file or bytes into an upright RGB image with all metadata stripped.

    Raises InputError for a missing file, a file over ``max_bytes``, content that is not one of
    ``allowed_formats``, more than ``max_pixels`` pixels (decompression bombs) or a truncated/corrupt file.
    """
    name = _name(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{name}: no such file")
        size = path.stat().st_size
        if size > max_bytes:
            raise InputError(f"{name}: file is {size / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB limit")
        data = path.read_bytes()
    else:
        data = bytes(source)
        if len(data) > max_bytes:
            raise InputError(f"{name}: file is {len(data) / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data), formats=list(allowed_formats))
            width, height = probe.size
            if width * height > max_pixels:
                raise InputError(
                    f"{name}: {width}x{height} pixels is over the limit of {max_pixels:,} pixels"
                )
            probe.load()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{name}: image is too large to decode safely (decompression bomb)") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: not a {'/'.join(allowed_formats)} image") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{name}: the image file is damaged or truncated ({err})") from None
    upright = ImageOps.exif_transpose(probe)
    rgb = upright.convert("RGB")
    clean = Image.new("RGB", rgb.size)
    clean.paste(rgb)
    return clean


def to_rgb_array(image: Any) -> np.ndarray:
    """A PIL image, path, bytes or (H, W, 3) array → contiguous uint8 RGB array."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr[..., :3])
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, (str, Path, bytes, bytearray)):
        return np.asarray(decode_image(image))
    raise InputError(f"unsupported image type {type(image).__name__}")


def to_pil(image: Any) -> Image.Image:
    """An RGB PIL image from a PIL image or anything :func:`to_rgb_array` accepts."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(to_rgb_array(image))
