"""``idglow data build-sft`` never writes an image that ``idglow train sft`` refuses: a camera-sized photo is
stored scaled down to the documented cap, and a rerun replaces its own output only when asked to."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from idglow.cli import main
from idglow.images import DEFAULT_MAX_BYTES, decode_image
from idglow.training.build_sft import MAX_STORED_SIDE
from idglow.training.files import SFTFolderDataset


@pytest.fixture(scope="module")
def camera_photo(tmp_path_factory, sample_portraits):
    """A 6000×4000 JPEG of two people on a noisy background (a full-size camera photo)."""
    rng = np.random.default_rng(0)
    canvas = Image.fromarray(rng.integers(0, 256, (4000, 6000, 3), dtype=np.uint8))
    for x, name in ((900, "person1"), (3300, "person2")):
        portrait = Image.open(sample_portraits[name]).convert("RGB")
        canvas.paste(portrait.resize((1500, round(1500 * portrait.height / portrait.width))), (x, 1000))
    folder = tmp_path_factory.mktemp("camera")
    canvas.save(folder / "family.jpg", quality=92)
    return folder


def test_the_photo_as_it_is_would_be_refused(camera_photo):
    """Control: stored at full size as before, this photo is a PNG over the trainer's file limit."""
    png = io.BytesIO()
    Image.open(camera_photo / "family.jpg").save(png, format="PNG")
    assert png.tell() > DEFAULT_MAX_BYTES


def test_build_sft_stores_a_camera_photo_that_the_trainer_reads(camera_photo, tmp_path, capsys):
    out = tmp_path / "sft"
    assert main(["data", "build-sft", "--photos", str(camera_photo), "--out", str(out)]) == 0, capsys.readouterr()
    row = json.loads((out / "metadata.jsonl").read_text().splitlines()[0])
    assert len(row["subjects"]) == 2
    written = sorted((out / "images").iterdir()) + sorted((out / "refs").iterdir())
    for path in written:
        image = decode_image(path)  # the trainer's reader, with its file-size limit
        assert max(image.size) <= MAX_STORED_SIDE
    stored = Image.open(out / row["image"])
    assert stored.size == (MAX_STORED_SIDE, round(MAX_STORED_SIDE * 4000 / 6000)) == (row["width"], row["height"])
    # the faces' normalised boxes still frame the people: each box's middle is inside the pasted portraits
    for subject, x in zip(row["subjects"], (900, 3300)):
        x1, _, x2, _ = subject["bbox"]
        assert x / 6000 < (x1 + x2) / 2 < (x + 1500) / 6000
    item = SFTFolderDataset(out, resolution=64)[0]
    assert item["pixel_values"].ndim == 3 and item["id_embeds"].shape[0] == 2


def test_max_side_is_checked_and_applied(camera_photo, tmp_path, capsys):
    assert main(["data", "build-sft", "--photos", str(camera_photo), "--out", str(tmp_path / "a"),
                 "--max-side", "4096"]) == 2
    assert "max_side=4096 must be between 64 and 2048" in capsys.readouterr().err
    assert main(["data", "build-sft", "--photos", str(camera_photo), "--out", str(tmp_path / "b"),
                 "--max-side", "900"]) == 0
    assert Image.open(next((tmp_path / "b" / "images").iterdir())).size == (900, 600)


def test_a_rerun_replaces_its_own_output_only_with_overwrite(sample_portraits, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "tom.jpg").write_bytes(sample_portraits["tom"].read_bytes())
    out = tmp_path / "sft"
    argv = ["data", "build-sft", "--photos", str(photos), "--out", str(out), "--min-faces", "1"]
    assert main(argv) == 0
    before = (out / "metadata.jsonl").read_text()
    assert main(argv) == 2
    assert "is not empty" in capsys.readouterr().err
    (out / "stale.txt").write_text("from an earlier run")
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "metadata.jsonl").read_text() == before and not (out / "stale.txt").exists()
    # a folder that is not a build-sft output is never removed
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    assert main(["data", "build-sft", "--photos", str(photos), "--out", str(other), "--overwrite"]) == 2
    assert "holds no metadata.jsonl" in capsys.readouterr().err
    assert (other / "mine.txt").read_text() == "keep me"
