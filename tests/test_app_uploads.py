"""Upload safety: content-based allowlist, pixel and size caps, truncated files, metadata stripped before
anything is stored (read back from the data dir)."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from annotation.privacy.uploads import UploadLimits, decode_upload
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
        ("eps.jpg", lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "not a JPEG/PNG/WEBP/HEIC image"),
        ("tiff.jpg", lambda: _encoded("TIFF"), "not a JPEG/PNG/WEBP/HEIC image"),
        ("svg.jpg", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>',
         "not a JPEG/PNG/WEBP/HEIC image"),
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
    from store_fixtures import make_store

    from annotation.generation.service import GenerationService
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
    view = handlers.photos(None, [str(upload)], True, [])
    state = view["state"]
    assert "photo metadata (EXIF, GPS) removed" in view["photo_status"]
    assert not upload.exists(), "the server's temporary copy of the upload must be deleted"
    assert len(state.people) == 1 and view["crop_0"] is state.people[0].subject.crop
    handlers.generate(state, GenerateForm(consent=True, seed=3, steps=2, num_images=1, size=64,
                                          model_versions=["tiny-demo"]))

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


def _jpeg_of(width: int, height: int, quality: int = 70) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_a_50_megapixel_phone_photo_is_accepted_and_decoded_small(tmp_path):
    """8160x6120 (49.9 MP) is over the 40 MP cap for full decodes, but a JPEG is decoded in draft mode."""
    path = tmp_path / "phone.jpg"
    path.write_bytes(_jpeg_of(8160, 6120))
    image = decode_upload(path, UploadLimits(max_pixels=40_000_000))
    assert max(image.size) == 2048 and image.size == (2048, 1536)


def test_a_jpeg_bomb_is_still_refused_before_decoding(tmp_path):
    """A JPEG whose header claims 20000x20000 pixels (400 MP) is refused from its header alone."""
    data = bytearray(_jpeg_of(16, 16))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 20000, 20000)
    path = tmp_path / "bomb.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="bomb.jpg: .*(over the limit|decompression bomb)"):
        decode_upload(path)


def test_a_large_png_is_decoded_at_a_bounded_size(tmp_path):
    path = tmp_path / "flat.png"
    Image.new("RGB", (6300, 6300), (10, 200, 30)).save(path)
    image = decode_upload(path)
    assert image.size == (2048, 2048) and image.getpixel((5, 5)) == (10, 200, 30)


def test_heic_photos_are_read_when_pillow_heif_is_installed(tmp_path):
    pytest.importorskip("pillow_heif")
    from annotation.privacy.uploads import heif_supported

    assert heif_supported()
    path = tmp_path / "IMG_0001.HEIC"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(path, format="HEIF")
    image = decode_upload(path)
    assert image.size == (64, 48) and abs(image.getpixel((32, 24))[0] - 200) < 20 and not image.getexif()


def test_heic_is_refused_in_a_plain_sentence_where_it_cannot_be_read(tmp_path):
    path = tmp_path / "IMG_0002.HEIC"
    path.write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64)
    limits = UploadLimits(allowed_formats=("JPEG", "PNG", "WEBP"))
    with pytest.raises(InputError, match="IMG_0002.HEIC: HEIC photos .* cannot be read on this server; please send it "
                                         "as JPEG"):
        decode_upload(path, limits)


def test_size_error_is_plain_words_from_the_app(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(b"\xff\xd8\xff" + b"\0" * (3 * 2**20))
    with pytest.raises(InputError, match=r"big.jpg: file is 3.0 MB, over the 2 MB limit; please send a smaller copy"):
        decode_upload(path, UploadLimits(max_bytes=2 * 2**20))


def test_faces_are_found_on_a_bounded_copy_and_boxed_in_the_photo(sample_portraits):
    """A portrait pasted into a 6300x6300 canvas: the detector sees at most 2048 px, the box is in 6300 px."""
    from annotation.generation.reference_faces import detect_bounded, people_in_photo

    class Recording:
        def __init__(self, inner):
            self.inner, self.sizes = inner, []

        def detect(self, image):
            self.sizes.append(image.size)
            return self.inner.detect(image)

    from idglow.faces.dlib_backend import DlibAnalyzer

    analyzer = Recording(DlibAnalyzer())
    face = Image.open(sample_portraits["person1"]).convert("RGB").resize((1200, 1200))
    canvas = Image.new("RGB", (6300, 6300), (128, 128, 128))
    canvas.paste(face, (3000, 2000))
    faces = detect_bounded(analyzer, canvas)
    assert analyzer.sizes == [(2048, 2048)] and len(faces) == 1
    x1, y1, x2, y2 = faces[0].bbox
    assert 3000 < x1 < x2 < 4200 and 2000 < y1 < y2 < 3200
    people = people_in_photo(analyzer, "big.png", canvas)
    assert len(people) == 1 and people[0].crop.size == (256, 256)
