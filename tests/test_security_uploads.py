"""Photos that used to fail or cost too much, sent to the running app: a phone's multi-picture JPEG, a PNG with a
huge text chunk, a 16-bit greyscale PNG, and the memory that decoding may hold at once."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

pytest.importorskip("gradio_client")

from gradio_client import Client, handle_file  # noqa: E402


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from app_fixtures import running_app

    with running_app(tmp_path_factory.mktemp("uploads-data")) as running:
        yield running


def _mpo(portrait, path) -> None:
    """A 48 MP multi-picture JPEG (a main photo and a small second frame, as phones write) holding the portrait."""
    face = Image.open(portrait).convert("RGB")
    canvas = Image.new("RGB", (8000, 6000), (182, 190, 176))
    canvas.paste(face.resize((2400, round(2400 * face.height / face.width))), (2800, 1500))
    canvas.save(path, format="MPO", save_all=True, append_images=[Image.new("RGB", (800, 600))], quality=80)
    assert Image.open(path).format == "MPO"


def _grey16(portrait, path) -> None:
    grey = np.asarray(Image.open(portrait).convert("L"), dtype=np.uint16) * 257  # the full 16-bit range
    Image.fromarray(grey).save(path, format="PNG")
    assert Image.open(path).mode == "I;16"


def _text_bomb(path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (3 * 2**20), zip=True)  # decompresses past Pillow's 1 MB text limit
    Image.new("RGB", (64, 64), (90, 90, 90)).save(path, format="PNG", pnginfo=info)


def test_mpo_16_bit_grey_and_a_text_bomb_each_get_their_own_answer(app, sample_portraits, tmp_path):
    mpo, grey, bomb = tmp_path / "phone.jpg", tmp_path / "grey16.png", tmp_path / "comment.png"
    _mpo(sample_portraits["person1"], mpo)
    _grey16(sample_portraits["person2"], grey)
    _text_bomb(bomb)
    client = Client(app.url, verbose=False, download_files=False)
    outputs = client.predict(files=[handle_file(str(p)) for p in (mpo, grey, bomb)], consent=True,
                             api_name="/upload")
    status = str(outputs)
    assert "2 people ready" in status, status
    assert "comment.png: the image carries a text or colour-profile block that is too large" in status, status
    assert "⚠ phone.jpg" not in status and "⚠ grey16.png" not in status, status  # both decoded, a face in each


def test_16_bit_grey_keeps_its_tones(sample_portraits, tmp_path):
    from annotation.privacy.uploads import decode_upload

    _grey16(sample_portraits["person2"], tmp_path / "g.png")
    decoded = np.asarray(decode_upload(tmp_path / "g.png"))
    expected = np.asarray(Image.open(sample_portraits["person2"]).convert("L"))
    assert decoded.shape[:2] == expected.shape
    assert np.abs(decoded[..., 0].astype(int) - expected).max() <= 1  # Pillow's own conversion gave all white


def test_decodes_at_once_hold_no_more_than_the_budget():
    """Four 16383×2440 WebP decodes (≈240 MB each by their header) under a 512 MB budget: at most two at a time."""
    from annotation.privacy.uploads import DecodeBudget, decode_cost

    buf = io.BytesIO()
    Image.new("RGB", (16383, 2440), (10, 200, 30)).save(buf, format="WEBP", quality=10)
    probe = Image.open(io.BytesIO(buf.getvalue()))
    cost = decode_cost(probe)
    assert 16383 * 2440 * 3 <= cost <= 16383 * 2440 * 8
    budget, peak, lock = DecodeBudget(512 * 2**20), [0], threading.Lock()

    def decode():
        with budget.reserved(cost):
            with lock:
                peak[0] = max(peak[0], budget.held)
            time.sleep(0.2)

    threads = [threading.Thread(target=decode) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] == 2 * cost and budget.held == 0
