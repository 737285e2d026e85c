"""Votes recorded through the annotation service → `idglow export` → DPO dataset → one DPO step."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from idglow.errors import InputError

pytest.importorskip("dlib")


def _astronaut():
    import skimage

    return Image.fromarray(skimage.data.astronaut())


def test_votes_export_dpo_dataset_and_one_dpo_step(tmp_path):
    from store_fixtures import make_store

    from annotation.commands import main as cli_main
    from annotation.store import users as U
    from annotation.store.candidates import (
        CandidateRecord,
        GenerationRecord,
        SubjectRecord,
        add_candidates,
        register_generation,
        register_model_version,
    )
    from annotation.store.sampling import next_comparison
    from annotation.store.votes import VoteRequest, record_vote
    from idglow.faces.base import FaceMatch
    from idglow.faces.dlib_backend import DlibAnalyzer
    from idglow.testing import tiny_pipeline
    from idglow.training.caching import PromptEmbedder
    from idglow.training.config import DPOConfig
    from idglow.training.files import PreferenceExportDataset
    from idglow.training.modeling import IdGlowDenoiser
    from idglow.training.trainer import DPOTrainer

    store = make_store(tmp_path / "store")
    photo = _astronaut()
    reference = photo.crop((100, 0, 356, 256))  # the face with some margin
    good = photo.resize((64, 64))
    bad = Image.fromarray(np.clip(np.asarray(good, dtype=np.int16) + np.random.default_rng(0).integers(
        -60, 60, (64, 64, 3)), 0, 255).astype(np.uint8))
    face_box = (22.0, 5.0, 34.0, 21.0)  # the astronaut's face in the 64x64 candidates
    match = FaceMatch(similarity=[0.9], bboxes=[face_box], face_of_slot=[0])
    with store.sessions() as s:
        U.create_user(s, "researcher", "research-pass-1", "researcher")
        annotators = [U.create_user(s, f"ann{i}", "annotate-pass-1", "annotator") for i in range(2)]
        register_model_version(s, "sft-v1")
        gen = register_generation(s, GenerationRecord(
            task="fusion", final_prompt="a portrait of an adult in a white suit", model_version="sft-v1",
            subjects=[SubjectRecord(reference, label="astronaut")]), store.data_dir)
        cands = add_candidates(s, gen.id, [CandidateRecord(good, seed=1, face_matches=match),
                                           CandidateRecord(bad, seed=2, face_matches=match)], store.data_dir,
                               in_pool=True)
        for i, user in enumerate(annotators):
            served = next_comparison(s, user.id, gold_rate=0.0)
            assert {served.candidate_a_id, served.candidate_b_id} == {c.id for c in cands}
            good_is_a = served.candidate_a_id == cands[0].id
            better = "a" if good_is_a else "b"
            record_vote(s, VoteRequest(comparison_id=served.comparison_id, user_id=user.id, overall=better,
                                       idempotency_key=f"vote-{i}", answers={
                                           "strength": "clear", "identity": {0: better}, "texture": better,
                                           "artifacts": "tie"}))
    out = tmp_path / "export"
    rc = cli_main(["export", "--db", store.url, "--data-dir", str(store.data_dir), "--out", str(out),
                   "--user", "researcher", "--with-images", "--quiet"])
    assert rc == 0

    dataset = PreferenceExportDataset(out, DlibAnalyzer(), resolution=64, split=None)
    assert len(dataset) == 1
    sample = dataset[0]
    # image 0 is candidate A; the preferred (clean) candidate wins overall, texture and identity_0
    sign = 1.0 if good_is_a else -1.0
    assert sample["preference"][:4].tolist() == [sign, sign, 0.0, sign]
    assert sample["strength"][0].item() == 1.0
    assert sample["pixel_values_0"].shape == (3, 64, 64)
    box = sample["face_boxes_0"][0]
    assert box == pytest.approx(tuple(v / 64 for v in face_box))
    assert sample["id_embeds"].shape == (1, 128)
    # the generation stored no embeddings, so the reference was embedded again; a database URL is refused
    assert dataset.redetected == 1
    with pytest.raises(InputError, match="database URL"):
        PreferenceExportDataset(store.url, DlibAnalyzer(), resolution=64, split=None)

    pipe = tiny_pipeline(seed=0)
    model = IdGlowDenoiser(pipe.transformer, pipe.adapter)
    before = {n: p.detach().clone() for n, p in model.adapter.named_parameters()}
    cfg = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, train_batch_size=1, learning_rate=1e-3,
                    report_to="none", checkpointing_steps=0, resolution=64, beta=100.0, gamma=1.0)

    encode_prompt = PromptEmbedder(pipe, "cpu", max_sequence_length=64)  # what `idglow train dpo` encodes with
    trainer = DPOTrainer(cfg, model, dataset, vae=pipe.vae, encode_prompt=encode_prompt)
    result = trainer.train()
    record = result.log_history[0]
    # at the first step policy == reference: every labelled dimension gives −log σ(−γ·s) = −log σ(−1)
    assert record["loss"] == pytest.approx(-math.log(1 / (1 + math.e)), rel=1e-5)
    assert {"accuracy/overall", "accuracy/texture", "accuracy/identity_0"} <= set(record)
    assert "accuracy/artifacts" not in record  # the tie contributes nothing
    changed = [n for n, p in model.adapter.named_parameters() if not torch.equal(p, before[n])]
    assert changed
