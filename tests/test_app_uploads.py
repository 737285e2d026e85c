"""Upload safety: content-based allowlist, pixel and size caps, truncated files, metadata stripped before
anything is stored (read back from the data dir)."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from annotation.privacy import UploadLimits, decode_upload
from idglow.errors import InputError


def _png_claiming(width: int, height: int) -> bytes:
    """A 1×1 PNG whose header claims ``width``×``height`` pixels (a decompression bomb's header)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def _gps_jpeg(source) -> bytes:
    image = Image.open(source).convert("RGB").transpose(Image.Transpose.ROTATE_90)  # stored sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° on display
    exif[0x010F] = "CameraMaker"
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)}  # GPS IFD
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("bomb.png", lambda: _png_claiming(60_000, 60_000), "decompression bomb|over the limit"),
        ("big.png", lambda: _png_claiming(8_000, 6_000), "8000x6000 pixels is over the limit of 40,000,000"),
        ("cut.jpg", lambda: _jpeg_bytes()[:1500], "damaged or truncated"),
        ("eps.jpg", lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "not a JPEG/PNG/WEBP image"),
        ("tiff.jpg", lambda: _encoded("TIFF"), "not a JPEG/PNG/WEBP image"),
        ("svg.jpg", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>',
         "not a JPEG/PNG/WEBP image"),
    ],
)
def test_bad_uploads_give_a_clear_message(tmp_path, name, make, message):
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(InputError, match=message) as info:
        decode_upload(path)
    assert str(info.value).startswith(f"{name}:") and str(tmp_path) not in str(info.value)


def test_a_30_mb_file_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.jpg"
    path.write_bytes(b"\xff\xd8\xff" + b"\0" * (30 * 2**20))
    with pytest.raises(InputError, match=r"huge.jpg: file is 30.0 MB, over the 20 MB limit"):
        decode_upload(path, UploadLimits())


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(buf, format=fmt)
    return buf.getvalue()


def _jpeg_bytes() -> bytes:
    import numpy as np

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_gps_photo_is_turned_upright_and_stored_without_metadata(tmp_path, sample_portraits):
    """Through the Generate handlers and the real generation service: the sideways photo is turned upright
    (dlib finds the face only then), and the stored reference and outputs carry no EXIF at all."""
    from annotation.generation import GenerationService
    from annotation.testing import make_store
    from annotation.ui.generate_handlers import GenerateForm, GenerateHandlers
    from idglow.faces.dlib_backend import DlibAnalyzer
    from idglow.testing import tiny_pipeline

    raw = _gps_jpeg(sample_portraits["person1"])
    assert Image.open(io.BytesIO(raw)).getexif().get_ifd(0x8825)
    upload = tmp_path / "upload" / "holiday.jpg"
    upload.parent.mkdir()
    upload.write_bytes(raw)

    store = make_store(tmp_path / "data")
    service = GenerationService(tiny_pipeline(face_analyzer=DlibAnalyzer()), store.sessions, store.data_dir,
                                base_version="tiny-demo", default_steps=2, default_size=64)
    service.ensure_base_version()
    handlers = GenerateHandlers(service, default_steps=2, default_size=64)
    crops, table, status, state = handlers.upload([str(upload)], True, None)
    assert "metadata (EXIF, GPS location) was removed" in status
    assert not upload.exists(), "the server's temporary copy of the upload must be deleted"
    assert state.subjects and len(crops) == 1
    form = GenerateForm(table, "fusion", "", "", True, 3, 2, 3.5, 1.0, 0.0, 1.0, 1, 64, ["tiny-demo"])
    handlers.generate(state, form)

    stored = sorted((store.data_dir / "images").rglob("*.png"))
    assert len(stored) == 2  # the reference crop and one candidate
    for path in stored:
        data = path.read_bytes()
        with Image.open(path) as im:
            assert not im.getexif() and "exif" not in im.info
        assert b"CameraMaker" not in data and b"Exif" not in data


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes())
    decoded = decode_upload(path)
    assert decoded.size == (20, 40) and not decoded.getexif()
