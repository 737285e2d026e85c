"""`idglow generate` end to end on the embedded default, and every bad input it must refuse cleanly."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from idglow.cli import main


def generate(capsys, *args):
    code = main(["generate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_writes_images_and_sidecars(tmp_path, capsys, sample_portraits):
    out = tmp_path / "out"
    code, stdout, _ = generate(
        capsys, "--subject", str(sample_portraits["person1"]), "--subject", str(sample_portraits["person2"]),
        "--task", "age", "--target-age", "6", "--target-age", "7", "--num-images", "2", "--seed", "5",
        "--steps", "6", "--out", str(out),
    )
    assert code == 0
    assert "tiny demo model" in stdout
    for seed in (5, 6):
        image = Image.open(out / f"idglow_{seed}.png")
        assert image.size == (64, 64)
        meta = json.loads((out / f"idglow_{seed}.json").read_text())
        assert meta["seed"] == seed
        assert meta["params"]["task"] == "age"
        assert meta["params"]["target_ages"] == [6.0, 7.0]
        assert meta["params"]["id_window"] == [0.3, 0.6, 0.0]
        assert meta["active_sigmas"] and all(0.3 <= s <= 0.6 for s in meta["active_sigmas"])
        assert len(meta["face_match"]["similarity"]) == 2
        assert [s["label"] for s in meta["subjects"]] == ["person1", "person2"]
    a = np.asarray(Image.open(out / "idglow_5.png"))
    b = np.asarray(Image.open(out / "idglow_6.png"))
    assert np.abs(a.astype(int) - b.astype(int)).max() > 0


def test_generate_age_task_with_a_person_who_keeps_their_age(tmp_path, capsys, sample_portraits):
    out = tmp_path / "out"
    code, _, err = generate(
        capsys, "--subject", str(sample_portraits["person1"]), "--subject", str(sample_portraits["person2"]),
        "--task", "age", "--target-age", "6", "--target-age", "-", "--id-profile", "linear", "--seed", "3",
        "--steps", "6", "--out", str(out),
    )
    assert code == 0, err
    meta = json.loads((out / "idglow_3.json").read_text())
    assert meta["params"]["target_ages"] == [6.0, None]
    windows = meta["params"]["slot_windows"]
    assert [(w["sigma_lo"], w["sigma_hi"], w["profile"]) for w in windows] == [(0.3, 0.6, "linear"),
                                                                               (0.0, 1.0, "linear")]
    assert [s["target_age"] for s in meta["subjects"]] == [6.0, None]


@pytest.fixture()
def bad_files(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    blank = tmp_path / "blank.png"
    Image.new("RGB", (128, 128), (200, 180, 160)).save(blank)
    return {"text": text, "blank": blank}


@pytest.mark.parametrize(
    "case,expected",
    [
        ("not_image", "notes.jpg: not a JPEG/PNG/WEBP image"),
        ("no_face", "no face found in the photo of subject 2"),
        ("too_many", "7 people given; 1 to 6 are supported"),
        ("age_count", "1 --target-age values for 2 subjects; give one per subject"),
        ("age_none", "needs a target age for at least one person"),
        ("age_range", "target age 150.0 must be between 0 and 120"),
        ("age_word", "'old' is not a number of years, '-' or 'keep'"),
        ("window_range", "sigma_hi=1.5 is outside [0, 1]"),
        ("window_order", "sigma_lo=0.6 is greater than sigma_hi=0.3"),
        ("unknown_task", "invalid choice: 'swap'"),
        ("model_missing", "is missing or incomplete; expected: model_index.json"),
        ("model_incomplete", "expected: transformer/"),
    ],
)
def test_bad_input_one_line_exit_2(case, expected, tmp_path, capsys, sample_portraits, bad_files):
    face = str(sample_portraits["person1"])
    out = ["--out", str(tmp_path / "o")]
    incomplete = tmp_path / "flux"
    incomplete.mkdir()
    (incomplete / "model_index.json").write_text("{}")
    for sub in ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae"):
        (incomplete / sub).mkdir()
    args = {
        "not_image": ["--subject", str(bad_files["text"])],
        "no_face": ["--subject", face, "--subject", str(bad_files["blank"])],
        "too_many": [a for _ in range(7) for a in ("--subject", face)],
        "age_count": ["--subject", face, "--subject", face, "--task", "age", "--target-age", "5"],
        "age_none": ["--subject", face, "--subject", face, "--task", "age", "--target-age", "-",
                     "--target-age", "keep"],
        "age_range": ["--subject", face, "--task", "age", "--target-age", "150"],
        "age_word": ["--subject", face, "--task", "age", "--target-age", "old"],
        "window_range": ["--subject", face, "--window", "0.2", "1.5"],
        "window_order": ["--subject", face, "--window", "0.6", "0.3"],
        "unknown_task": ["--subject", face, "--task", "swap"],
        "model_missing": ["--subject", face, "--model", str(tmp_path / "nowhere")],
        "model_incomplete": ["--subject", face, "--model", str(incomplete)],
    }[case]
    if case in ("unknown_task", "age_word"):
        with pytest.raises(SystemExit) as exit_info:
            main(["generate", *args, *out])
        code, err = exit_info.value.code, capsys.readouterr().err
    else:
        code, _, err = generate(capsys, *args, *out)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("idglow")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_console_script_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "idglow", "generate", "--subject", str(bad), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "x.jpg: not a JPEG/PNG/WEBP image" in proc.stderr
    assert "Traceback" not in proc.stderr
