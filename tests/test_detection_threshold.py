"""The face detection threshold (real dlib on the bundled astronaut: the mission patch is no person) and the
per-person "describe as" of `idglow prompt` and of build-sft manifests."""

from __future__ import annotations

import json
import shutil

import pytest

from idglow.cli import main as cli_main
from idglow.faces.base import DLIB_DETECTION_THRESHOLD

pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def dlib_analyzer():
    from idglow.faces.dlib_backend import DlibAnalyzer

    return DlibAnalyzer()


def test_the_mission_patch_is_not_a_face_but_every_real_face_is(dlib_analyzer, sample_portraits):
    from idglow.faces.dlib_backend import DlibAnalyzer

    astronaut = sample_portraits["astronaut"]
    loose = DlibAnalyzer(det_threshold=0.0).detect(astronaut)  # dlib's own default: the patch counts
    assert len(loose) == 2 and 0.0 <= min(f.score for f in loose) < DLIB_DETECTION_THRESHOLD
    faces = dlib_analyzer.detect(astronaut)
    assert len(faces) == 1 and faces[0].score >= DLIB_DETECTION_THRESHOLD
    assert max(f.area for f in loose) == faces[0].area  # the face kept is the astronaut's
    for name, path in sample_portraits.items():  # every bundled person is still found
        assert len(dlib_analyzer.detect(path)) == 1, name


def _astronaut_folder(sample_portraits, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(sample_portraits["astronaut"], folder / "astronaut.jpg")
    return folder


def _subjects(out):
    return [row["subjects"] for row in map(json.loads, (out / "metadata.jsonl").read_text().splitlines())]


def test_build_sft_counts_one_person_and_the_threshold_can_be_overridden(sample_portraits, tmp_path):
    folder = _astronaut_folder(sample_portraits, tmp_path)
    base = ["data", "build-sft", "--photos", str(folder), "--min-faces", "1"]
    assert cli_main([*base, "--out", str(tmp_path / "default")]) == 0
    assert [len(s) for s in _subjects(tmp_path / "default")] == [1]
    assert cli_main([*base, "--out", str(tmp_path / "loose"), "--det-threshold", "0"]) == 0
    assert [len(s) for s in _subjects(tmp_path / "loose")] == [2]  # control: the patch is a person at 0


def test_build_sft_manifest_describe_as_reaches_the_rows_and_prompts(sample_portraits, tmp_path, capsys):
    folder = _astronaut_folder(sample_portraits, tmp_path)
    plain = {"people": {"eileen": ["astronaut.jpg"]}}
    (folder / "plain.json").write_text(json.dumps(plain))
    told = {"people": {"eileen": [{"photo": "astronaut.jpg", "describe_as": "man"}]}}
    (folder / "told.json").write_text(json.dumps(told))
    for name in ("plain", "told"):
        assert cli_main(["data", "build-sft", "--manifest", str(folder / f"{name}.json"), "--min-faces", "1",
                         "--out", str(tmp_path / name)]) == 0
    plain_rows = [json.loads(r) for r in (tmp_path / "plain" / "metadata.jsonl").read_text().splitlines()]
    told_rows = [json.loads(r) for r in (tmp_path / "told" / "metadata.jsonl").read_text().splitlines()]
    assert plain_rows[0]["subjects"][0]["describe_as"] is None and "woman" in plain_rows[0]["prompt"]  # estimate
    assert told_rows[0]["subjects"][0]["describe_as"] == "man"
    assert "woman" not in told_rows[0]["prompt"] and " man " in told_rows[0]["prompt"]
    (folder / "bad.json").write_text(json.dumps({"people": {"eileen": [{"photo": "astronaut.jpg",
                                                                        "describe_as": "lady"}]}}))
    capsys.readouterr()
    assert cli_main(["data", "build-sft", "--manifest", str(folder / "bad.json"), "--out", str(tmp_path / "bad")]) != 0
    assert "people.eileen: describe as 'lady': choose one of woman, man, girl, boy" in capsys.readouterr().err


def _genders(capsys, args):
    assert cli_main(args) == 0
    prompt = json.loads(capsys.readouterr().out)
    return [p["gender"] for p in prompt["persons"]], prompt["text"]


def test_prompt_command_describe_as_overrides_the_estimates(sample_portraits, capsys):
    subjects = [a for n in ("person1", "person2", "person3") for a in ("--subject", str(sample_portraits[n]))]
    estimated, _ = _genders(capsys, ["prompt", *subjects])
    assert estimated == ["female", "female", "male"]  # control: the analyzer's estimates
    said, text = _genders(capsys, ["prompt", *subjects, "--describe-as", "man,-,woman"])
    assert said == ["male", "female", "female"]
    assert "(person1) is a man" in text and "(person3) is a woman" in text
    with pytest.raises(SystemExit):
        cli_main(["prompt", *subjects, "--describe-as", "man,robot,-"])
    assert "choose one of woman, man, girl, boy" in capsys.readouterr().err
    assert cli_main(["prompt", *subjects, "--describe-as", "man,-"]) != 0
    assert "2 --describe-as values for 3 subjects" in capsys.readouterr().err
