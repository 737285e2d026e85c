"""Sample portraits made from face photos that ship inside installed packages (nothing is downloaded).

insightface bundles a group photo of six people (``t1.jpg``) and a portrait; scikit-image bundles the
astronaut portrait. ``write_sample_portraits`` crops each face into its own file, so the commands and the app
can be tried at once.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from PIL import Image

from idglow.errors import IdGlowError
from idglow.faces.base import FaceAnalyzer, sort_largest_first
from idglow.images import decode_image


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.is_file() else None


def group_photo() -> Path:
    """insightface's bundled group photo with six faces."""
    path = _package_file("insightface", "data", "images", "t1.jpg")
    if path is None:
        raise IdGlowError("insightface's bundled t1.jpg was not found; is insightface installed?")
    return path


def portrait_photos() -> list[Path]:
    """Single-person photos bundled by installed packages."""
    found = [
        _package_file("skimage", "data", "astronaut.png"),
        _package_file("insightface", "data", "images", "Tom_Hanks_54745.png"),
    ]
    return [p for p in found if p is not None]


def crop_box(bbox, width: int, height: int, margin: float = 0.8, lift: float = 0.15) -> tuple[int, int, int, int]:
    """A square box around a face bbox, enlarged by ``margin`` of the face's size on each side and moved up by
    ``lift`` of its height (a face box ends at the eyebrows: this keeps the hair). The box is shifted to lie
    inside the image, and shrunk only when the image is smaller than the box."""
    x1, y1, x2, y2 = bbox
    side = min(max(x2 - x1, y2 - y1) * (1 + 2 * margin), width, height)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2 - lift * (y2 - y1)
    left = int(round(min(max(cx - side / 2, 0.0), width - side)))
    top = int(round(min(max(cy - side / 2, 0.0), height - side)))
    size = int(side)
    return left, top, left + size, top + size


def write_sample_portraits(out_dir: str | Path, analyzer: FaceAnalyzer, size: int = 256) -> list[Path]:
    """Write person1.jpg … person6.jpg (faces of the bundled group photo, left to right) and the bundled
    single portraits to ``out_dir``. Returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    group = decode_image(group_photo())
    faces = sorted(sort_largest_first(analyzer.detect(group)), key=lambda f: f.bbox[0])
    written = []
    for i, face in enumerate(faces, start=1):
        crop = group.crop(crop_box(face.bbox, *group.size)).resize((size, size), Image.LANCZOS)
        path = out / f"person{i}.jpg"
        crop.save(path, quality=95)
        written.append(path)
    for src in portrait_photos():
        path = out / f"{src.stem.split('_')[0].lower()}.jpg"
        decode_image(src).save(path, quality=95)
        written.append(path)
    return written


EXAMPLE_FAMILY = ("person1", "person3", "person6")


def example_family(out_dir: str | Path, analyzer: FaceAnalyzer) -> list[Path]:
    """The portraits of the "example family" (three faces of the bundled group photo), written to ``out_dir``
    on first use."""
    out = Path(out_dir)
    paths = [out / f"{name}.jpg" for name in EXAMPLE_FAMILY]
    if not all(p.is_file() for p in paths):
        write_sample_portraits(out, analyzer)
    return paths
