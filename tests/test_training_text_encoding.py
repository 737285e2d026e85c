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


def test_dpo_on_an_export_feeds_clip_the_text_generation_gave_it(tmp_path):
    """The export carries the CLIP text of each generation (``clip_caption``); DPO encodes (CLIP text, caption),
    as the pipeline was called, and an export without the column falls back to the caption for both."""
    import pyarrow.parquet as pq
    from sqlalchemy import select
    from store_fixtures import make_store

    from annotation.store.demo import DemoReference, pattern_image, seed_demo_data
    from annotation.store.export import export_preferences
    from db.models import Generation
    from idglow.training.files import PreferenceExportDataset

    store = make_store(tmp_path / "store")
    refs = [DemoReference(pattern_image(100 + i), [float(i), 1.0, 0.5], "test") for i in range(6)]
    with store.sessions() as s:
        seed_demo_data(s, store.data_dir, candidates=6, votes=20, annotators=2, gold_rate=0.0, seed=1, references=refs)
        for gen in s.scalars(select(Generation)):
            gen.params = {**gen.params, "prompt": f"short {gen.id}"}  # what the pipeline gave CLIP
        s.commit()
        export_preferences(s, tmp_path / "export", data_dir=store.data_dir, with_images=True)
    dataset = PreferenceExportDataset(tmp_path / "export", resolution=64, split=None)
    assert len(dataset) > 0
    rows = [item["row"] for item in dataset.items]
    assert all(r["clip_caption"].startswith("short ") and r["clip_caption"] != r["caption"] for r in rows)
    assert dataset_prompts(dataset) == [(r["clip_caption"], r["caption"]) for r in rows]
    pipe = tiny_pipeline(seed=0)
    embedder = PromptEmbedder(pipe, "cpu", max_sequence_length=MAX_T5)
    batch = collate_group_samples([dataset[0]])
    _, pooled, _ = SFTTrainer.prompts_of(SimpleNamespace(encode_prompt=embedder, device=torch.device("cpu")), batch)
    expected = _encode(pipe, prompt=[rows[0]["clip_caption"]], prompt_2=[rows[0]["caption"]])[1]
    torch.testing.assert_close(pooled, expected)
    assert not torch.allclose(pooled, _encode(pipe, prompt=[rows[0]["caption"]], prompt_2=None)[1])

    for f in (tmp_path / "export" / "data").glob("*.parquet"):  # an export written before the column
        pq.write_table(pq.read_table(f).drop_columns(["clip_caption"]), f)
    old = PreferenceExportDataset(tmp_path / "export", resolution=64, split=None)
    assert dataset_prompts(old) == [(r["caption"], r["caption"]) for r in rows]
