"""Training encodes a caption the way inference encodes the prompt: CLIP (the pooled embedding) reads the compact
CLIP text and T5 the full text, through the same ``GroupPrompt.pipeline_kwargs`` the pipeline is called with."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from idglow.prompting import GroupPrompt
from idglow.tiny import tiny_pipeline
from idglow.training.caching import PromptEmbedder, caption_encoder_prompt, dataset_prompts
from idglow.training.data import collate_group_samples
from idglow.training.files import SFTFolderDataset
from idglow.training.trainer import SFTTrainer

MAX_T5 = 64


def _encode(pipe, **kwargs):
    return pipe.encode_prompt(device="cpu", max_sequence_length=MAX_T5, **kwargs)


def test_trainer_feeds_clip_the_inference_clip_text(sft_folder):
    dataset = SFTFolderDataset(sft_folder, resolution=64)
    row = dataset.rows[0]
    inference = GroupPrompt.from_dict(row["prompt_record"]).pipeline_kwargs()  # what the pipeline is called with
    assert inference["prompt_2"] == row["prompt"] and inference["prompt"] != row["prompt"]
    pipe = tiny_pipeline(seed=0)
    expected_embeds, expected_pooled, _ = _encode(pipe, **inference)
    _, full_text_pooled, _ = _encode(pipe, prompt=row["prompt"], prompt_2=None)  # CLIP fed the training caption
    assert not torch.allclose(full_text_pooled, expected_pooled)  # the two encodings can be told apart

    embedder = PromptEmbedder(pipe, "cpu", max_sequence_length=MAX_T5)
    batch = collate_group_samples([dataset[0]])
    trainer = SimpleNamespace(encode_prompt=embedder, device=torch.device("cpu"))
    embeds, pooled, _ = SFTTrainer.prompts_of(trainer, batch)
    torch.testing.assert_close(pooled, expected_pooled)
    torch.testing.assert_close(embeds, expected_embeds)


def test_dataset_prompts_are_what_the_trainer_encodes_so_precompute_covers_training(sft_folder):
    dataset = SFTFolderDataset(sft_folder, resolution=64)
    prompts = dataset_prompts(dataset)
    assert prompts == [caption_encoder_prompt(row) for row in dataset.rows]
    assert all(isinstance(p, tuple) and p[1] == row["prompt"] for p, row in zip(prompts, dataset.rows))
    embedder = PromptEmbedder(tiny_pipeline(seed=0), "cpu", max_sequence_length=MAX_T5)
    embedder.precompute(prompts)
    calls = embedder.encoder_calls
    SFTTrainer.prompts_of(SimpleNamespace(encode_prompt=embedder, device=torch.device("cpu")),
                          collate_group_samples([dataset[i] for i in range(len(dataset))]))
    assert embedder.encoder_calls == calls and len(embedder) == len(set(prompts))


def test_a_caption_without_a_prompt_record_feeds_both_encoders_the_same_text():
    pipe = tiny_pipeline(seed=0)
    row = {"prompt": "two friends in a park"}
    assert caption_encoder_prompt(row) == "two friends in a park"
    edited = {"prompt": "edited by hand", "prompt_record": {"text": "the writer's text", "clip_text": "short"}}
    assert caption_encoder_prompt(edited) == "edited by hand"  # a record of another text does not apply
    embeds, pooled, _ = PromptEmbedder(pipe, "cpu", max_sequence_length=MAX_T5)([row["prompt"]])
    expected = _encode(pipe, prompt=[row["prompt"]], prompt_2=None)
    torch.testing.assert_close(pooled, expected[1])
    torch.testing.assert_close(embeds, expected[0])
