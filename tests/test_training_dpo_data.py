"""The DPO data path: each preference dimension's region, persons missing from one image, preference
strengths per dimension, and what the trainer makes of them."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from idglow.losses import DPO_DIMENSIONS
from idglow.training.data import (
    DEFAULT_MISSING_STRENGTH,
    PreferencePairDataset,
    boxes_to_masks,
    dpo_region_masks,
    preference_strengths,
)

D = len(DPO_DIMENSIONS)
OVERALL, TEXTURE, ARTIFACTS, ID0, ID1 = 0, 1, 2, 3, 4


def test_texture_artifacts_and_overall_have_their_own_regions():
    boxes = [[(0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 0.75)]]
    m0, m1 = dpo_region_masks(boxes, boxes, 2, 8, 8)
    faces = boxes_to_masks(boxes, 2, 8, 8)[0]
    union = faces.amax(dim=0)
    assert m0.shape == (1, D, 8, 8)
    assert torch.equal(m0[0, OVERALL], torch.ones(8, 8))
    assert torch.equal(m0[0, TEXTURE], union)  # the people's faces
    assert torch.equal(m0[0, ARTIFACTS], 1.0 - union)  # everything else
    assert 0 < union.sum() < 64
    assert torch.equal(m0[0, ID0], faces[0]) and torch.equal(m0[0, ID1], faces[1])
    assert torch.equal(m0, m1)


def test_image_without_faces_judges_texture_and_artifacts_on_the_whole_image():
    m0, m1 = dpo_region_masks([[None]], [[(0.0, 0.0, 1.0, 1.0)]], 1, 4, 4)
    assert torch.equal(m0[0, TEXTURE], torch.ones(4, 4)) and torch.equal(m0[0, ARTIFACTS], torch.ones(4, 4))
    assert torch.equal(m1[0, TEXTURE], torch.ones(4, 4))
    assert torch.equal(m1[0, ARTIFACTS], torch.ones(4, 4))  # faces cover it all: nothing is left outside


def test_person_missing_from_one_image_is_judged_where_the_other_image_shows_them():
    box = (0.25, 0.25, 0.5, 0.75)
    boxes_0 = [[box, (0.5, 0.0, 1.0, 0.5)], [None, None]]
    boxes_1 = [[None, (0.0, 0.5, 0.5, 1.0)], [None, None]]
    m0, m1 = dpo_region_masks(boxes_0, boxes_1, 2, 8, 8)
    expected = boxes_to_masks([[box]], 1, 8, 8)[0, 0]
    assert torch.equal(m0[0, ID0], expected)
    assert torch.equal(m1[0, ID0], expected)  # missing from image 1: the region where it was expected
    assert not torch.equal(m1[0, ID1], m0[0, ID1])  # present in both: each image's own face
    assert torch.equal(m0[1, ID0], torch.ones(8, 8)) and torch.equal(m1[1, ID0], torch.ones(8, 8))
    for masks in (m0, m1):
        assert (masks.flatten(2).sum(-1) > 0).all()  # no empty region, so no label is dropped


def test_strength_missing_or_zero_is_the_documented_default_not_clear():
    assert DEFAULT_MISSING_STRENGTH == 0.5
    for row in ({"strength": None}, {"strength": 0.0}, {"strength": float("nan")}, {}):
        np.testing.assert_array_equal(preference_strengths(row), np.full(D, 0.5, np.float32))
    np.testing.assert_array_equal(preference_strengths({"strength": 0.0}, missing=1.0), np.ones(D, np.float32))
    np.testing.assert_array_equal(preference_strengths({"strength": 1.0}), np.ones(D, np.float32))


def test_agreement_as_strength_with_a_missing_agreement_does_not_crash():
    row = {"strength": 1.0, "agreement": None}
    np.testing.assert_array_equal(preference_strengths(row, use_agreement=True), np.full(D, 0.5, np.float32))
    row["agreement"] = 0.75
    np.testing.assert_array_equal(preference_strengths(row, use_agreement=True), np.full(D, 0.75, np.float32))


def test_strengths_read_only_the_columns_the_declared_grades_name(monkeypatch):
    from idglow import preferences

    # the export writes one strength column, the grade of overall; a column nobody declares is not read
    row = {"strength": 1.0, "texture_strength": 0.5, "identity_strengths_0": [0.5, None, 0.0]}
    assert [q.column for q in preferences.QUESTIONS if q.grades] == ["strength"]
    np.testing.assert_array_equal(preference_strengths(row), np.ones(D, np.float32))
    # a declared per-person grade of identity: its column gives each person's strength, overall the rest
    grade = preferences.Question("identity_strengths_0", "How clear?", "", preferences.QUESTIONS[1].choices,
                                 per_person=True, region=None, grades="identity", grades_values=("a", "b"),
                                 strengths=(("slight", 0.5), ("clear", 1.0)))
    monkeypatch.setattr(preferences, "QUESTIONS", preferences.QUESTIONS + (grade,))
    s = preference_strengths(row)
    assert s[OVERALL] == 1.0 and s[TEXTURE] == 1.0 and s[ARTIFACTS] == 1.0
    assert s[ID0] == 0.5 and s[ID1] == 1.0 and s[ID1 + 1] == 1.0 and s[-1] == 1.0
    with pytest.raises(ValueError, match="strength 2.0 is above 1"):
        preference_strengths({"strength": 2.0})
    with pytest.raises(ValueError, match="missing strength 1.5"):
        preference_strengths({}, missing=1.5)


def test_dpo_config_validates_missing_strength(tmp_path):
    from idglow.training.config import DPOConfig

    assert DPOConfig(output_dir=str(tmp_path)).missing_strength == 0.5
    with pytest.raises(ValueError, match="missing_strength=1.2"):
        DPOConfig(output_dir=str(tmp_path), missing_strength=1.2)


def _identity_only_pairs(n=2):
    """Pairs labelled only on identity_0, where person 0 is missing from the losing image 1."""
    from tests.training_helpers import toy_pairs

    out = []
    for sample in toy_pairs(n).samples:
        sample = dict(sample)
        sample["face_boxes_1"] = [None, *sample["face_boxes_0"][1:]]
        pref = torch.zeros(D)
        pref[ID0] = 1.0
        sample["preference"] = pref
        out.append(sample)
    return PreferencePairDataset(out)


def test_trainer_keeps_the_identity_label_of_a_person_missing_from_the_loser(tmp_path):
    from idglow.training.config import DPOConfig
    from idglow.training.trainer import DPOTrainer
    from tests.training_helpers import small_model

    cfg = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, train_batch_size=2, learning_rate=1e-12,
                    report_to="none", checkpointing_steps=0, beta=10.0, gamma=0.0, lora_rank=2)
    trainer = DPOTrainer(cfg, small_model(), _identity_only_pairs())
    batch = next(iter(trainer.dataloader))
    loss, logs = trainer.compute_loss(batch, torch.Generator().manual_seed(0))
    # Policy = reference at the start: each labelled entry costs log 2; a dropped label would give 0.
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert "accuracy/identity_0" in logs and "accuracy/overall" not in logs
    loss.backward()
    grads = [p.grad for p in trainer.unwrapped.adapter.parameters() if p.requires_grad and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def _jpeg(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_export_rows_with_a_missing_agreement_load_with_the_default_strength(tmp_path):
    """A hand-written export row (both bad on overall, texture labelled, no agreement) under
    use_agreement_as_strength: it loads, and every strength is the configured default."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    import skimage
    from PIL import Image

    from idglow.faces.dlib_backend import DlibAnalyzer
    from idglow.training.files import PreferenceExportDataset

    photo = Image.fromarray(skimage.data.astronaut())
    small = photo.resize((64, 64))
    faces = json.dumps({"matches": {"bboxes": [[22.0, 5.0, 34.0, 21.0]]}})
    row = {"ranking_id": 1, "caption": "a portrait", "task": "fusion", "num_subjects": 1, "target_ages": [None],
           "jpg_0": _jpeg(small), "jpg_1": _jpeg(small.rotate(5)), "reference_images": [_jpeg(photo.crop((100, 0, 356, 256)))],
           "faces_0": faces, "faces_1": json.dumps({"matches": {"bboxes": [None]}}), "label_0": 0.0,
           "has_label": False, "texture_label_0": 1.0, "artifacts_label_0": None, "identity_labels_0": [1.0],
           "strength": 0.0, "agreement": None, "split": "train"}
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "pairs.parquet")
    dataset = PreferenceExportDataset(tmp_path / "pairs.parquet", DlibAnalyzer(), resolution=64,
                                      use_agreement_as_strength=True, missing_strength=0.5)
    sample = dataset[0]
    assert sample["preference"][:4].tolist() == [0.0, 1.0, 0.0, 1.0]
    torch.testing.assert_close(sample["strength"], torch.full((D,), 0.5))
    assert sample["face_boxes_1"] == [None] and sample["face_boxes_0"][0] is not None


LEFT, RIGHT = [0.0, 0.0, 20.0, 20.0], [40.0, 0.0, 60.0, 20.0]
PLACED = ("The first person from the left (Ann) waves. The second person from the left (Bob) smiles.")


def test_identity_regions_come_from_each_persons_own_place():
    """Bob's face stands where the caption puts Ann and the other way round: the matches follow the faces, the
    identity regions stay in each person's place."""
    from idglow.training.files import caption_positions, identity_boxes

    record = {"matches": {"bboxes": [RIGHT, LEFT]}, "faces": [{"bbox": RIGHT}, {"bbox": LEFT}]}
    assert caption_positions(PLACED, ["Ann", "Bob"], 2) == [1, 2]
    assert caption_positions(PLACED, ["Bob", "Ann"], 2) == [2, 1]
    assert caption_positions("two friends at the beach", ["Ann", "Bob"], 2) is None
    assert caption_positions(PLACED, None, 2) == [1, 2]  # no labels: the template writer's slot order
    assert identity_boxes(record, 2, [1, 2]) == [tuple(LEFT), tuple(RIGHT)]
    assert identity_boxes(record, 2, None) == [RIGHT, LEFT]  # no places: the identity match
    one_face = {"matches": {"bboxes": [LEFT, None]}, "faces": [{"bbox": LEFT}]}
    assert identity_boxes(one_face, 2, [1, 2]) == [LEFT, None]  # places cannot be read: the match
    recorded = {**record, "binding": {"places": "order", "place_bboxes": [LEFT]}}
    assert identity_boxes(recorded, 2, None) == [LEFT, None]


def test_export_rows_judge_identity_in_each_persons_place(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from idglow.training.files import PreferenceExportDataset

    img = Image.new("RGB", (64, 64), (90, 120, 150))
    swapped = json.dumps({"matches": {"bboxes": [RIGHT, LEFT]}, "faces": [{"bbox": RIGHT}, {"bbox": LEFT}]})
    row = {"ranking_id": 1, "caption": PLACED, "subject_labels": ["Ann", "Bob"], "task": "fusion",
           "num_subjects": 2, "target_ages": [None, None], "jpg_0": _jpeg(img), "jpg_1": _jpeg(img),
           "reference_embeddings": [[1.0, 0.0], [0.0, 1.0]], "face_backend": "dlib",
           "faces_0": swapped, "faces_1": swapped, "label_0": 1.0, "has_label": True,
           "identity_labels_0": [1.0, 1.0], "strength": 1.0, "split": "train"}
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "pairs.parquet")
    sample = PreferenceExportDataset(tmp_path / "pairs.parquet", resolution=64)[0]
    ann, bob = sample["face_boxes_0"]
    assert ann[0] < 0.5 < bob[0]  # Ann's region is on the left, where the caption puts her
