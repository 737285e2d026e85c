"""The SFT set builder, the folder dataset and the `idglow train` / `idglow data` commands."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from idglow.cli import main as cli_main


def test_build_sft_writes_references_and_metadata(sft_folder, capsys):
    rows = [json.loads(x) for x in (sft_folder / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 1  # the blank photo has no face and is skipped
    row = rows[0]
    assert row["scene"] == "a portrait of an adult in a white suit" and row["task"] == "fusion"
    assert row["prompt_source"] == "template" and "a portrait of an adult in a white suit" in row["prompt"]
    assert "(" not in row["prompt"]  # a flat folder names nobody: no label in the prompt
    (subject,) = row["subjects"]
    x1, y1, x2, y2 = subject["bbox"]
    assert 0 < x1 < x2 < 1 and 0 < y1 < y2 < 1
    ref, flip = (Image.open(sft_folder / p) for p in subject["references"])
    assert np.array_equal(np.asarray(ref)[:, ::-1], np.asarray(flip))
    e0, e1 = (np.asarray(e) for e in subject["embeddings"])
    assert e0.shape == (128,) and float(e0 @ e1) > 0.8  # the mirrored face is the same person


def test_build_sft_refuses_non_empty_output(photos, sft_folder, capsys):
    assert cli_main(["data", "build-sft", "--photos", str(photos), "--out", str(sft_folder)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_sft_folder_dataset_buckets_and_boxes(sft_folder):
    from idglow.training.files import SFTFolderDataset

    ds = SFTFolderDataset(sft_folder, resolution=64)
    item = ds[0]
    assert item["pixel_values"].shape == (3, 64, 64)
    assert -1.0 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1.0
    assert item["id_embeds"].shape == (1, 128)
    assert item["face_boxes"][0] == pytest.approx(
        json.loads((sft_folder / "metadata.jsonl").read_text())["subjects"][0]["bbox"])


def test_train_sft_command_on_the_tiny_model(sft_folder, tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli_main(["train", "sft", "--set", "model=tiny", "--set", f"train_data={sft_folder}", "--set",
                   f"output_dir={out}", "--set", "max_steps=2", "--set", "resolution=64", "--set",
                   "report_to=none", "--set", "checkpointing_steps=1", "--set", "checkpoints_total_limit=1"])
    assert rc == 0, capsys.readouterr().err
    assert "trained 2 steps" in capsys.readouterr().out
    assert (out / "adapter" / "diffusion_pytorch_model.safetensors").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    from idglow.adapter import IdGlowAdapter

    trained = IdGlowAdapter.from_pretrained(str(out / "adapter"))
    from idglow.testing import tiny_pipeline

    fresh = tiny_pipeline(seed=0).adapter
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), fresh.state_dict().values()))


def test_train_command_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["train", "sft", "--set", "max_steps=1"]) == 2
    assert "train_data is not set" in capsys.readouterr().err
    assert cli_main(["train", "dpo", "--set", "bogus=1", "--set", "train_data=x"]) == 2
    assert "unknown DPOConfig option(s): bogus" in capsys.readouterr().err
    assert cli_main(["train", "sft", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["train", "sft", "--set", f"train_data={tmp_path}"]) == 2
    assert "metadata.jsonl is missing" in capsys.readouterr().err
