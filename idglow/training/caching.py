"""What a training run computes once instead of every step: prompt embeddings (the text encoders visit the
accelerator only to encode) and, optionally, VAE latents."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

PIXEL_KEYS = ("pixel_values", "pixel_values_0", "pixel_values_1")
#: What the text encoders read for one sample: one text for both (FLUX's ``prompt`` with ``prompt_2=None``), or
#: (CLIP text, T5 text) — FLUX's ``prompt`` and ``prompt_2`` — as a composed prompt gives them at inference.
EncoderPrompt = str | tuple[str, str]


def caption_encoder_prompt(row: dict[str, Any]) -> EncoderPrompt:
    """A training caption as the text encoders read it at inference: a row whose ``prompt`` was written by the
    prompt writer (``prompt_record``, a ``GroupPrompt``) gets that prompt's ``pipeline_kwargs()`` — the compact
    CLIP text and the full T5 text, the very call the pipeline receives — else its ``prompt`` for both."""
    from idglow.prompting import GroupPrompt

    record = row.get("prompt_record")
    if not record or record.get("text") != row["prompt"]:
        return row["prompt"]
    kwargs = GroupPrompt.from_dict(record).pipeline_kwargs()
    return (kwargs["prompt"], kwargs["prompt_2"])


def encoder_pair(prompt: EncoderPrompt) -> tuple[str, str]:
    """(CLIP text, T5 text) of an ``EncoderPrompt``."""
    return (prompt, prompt) if isinstance(prompt, str) else (str(prompt[0]), str(prompt[1]))


def batch_encoder_prompts(batch: dict[str, Any]) -> list[EncoderPrompt]:
    """Each sample's ``EncoderPrompt`` in a collated batch: ``prompt`` (the T5 text), with ``clip_prompt`` when
    the samples carry one."""
    if batch.get("clip_prompt") is None:
        return list(batch["prompt"])
    return list(zip(batch["clip_prompt"], batch["prompt"]))


class PromptEmbedder:
    """``encode_prompt`` for the trainers: ``embedder(prompts) -> (prompt_embeds, pooled, txt_ids)`` with a
    FLUX pipeline's text encoders. Each prompt is an ``EncoderPrompt``: one text for both encoders, or the
    (CLIP text, T5 text) pair a composed prompt gives the pipeline at inference (``caption_encoder_prompt``).

    With ``cache`` each distinct prompt is encoded once and its embeddings kept in host memory (in the text
    encoders' dtype: about 4 MB per prompt for T5 at 512 tokens × 4096 in bf16); the encoders live on the CPU
    and move to ``device`` only while encoding a batch of new prompts. Without ``cache`` they move to ``device``
    at the first call, stay there, and every batch is encoded.

    Args:
        pipe: a FluxPipeline (or IdGlowPipeline) holding text_encoder(_2) and tokenizer(_2).
        device: where encoding runs (the accelerator).
        max_sequence_length: T5 tokens per prompt (capped at the tokenizer's maximum).
    """

    def __init__(self, pipe, device: torch.device | str, max_sequence_length: int = 512, cache: bool = True):
        self.pipe = pipe
        self.device = torch.device(device)
        self.max_sequence_length = min(max_sequence_length, pipe.tokenizer_2.model_max_length)
        self.cache = cache
        self.encoder_calls = 0  # batches the text encoders ran on
        self._stored: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._txt_ids: torch.Tensor | None = None

    @property
    def encoders(self) -> list[torch.nn.Module]:
        return [m for m in (self.pipe.text_encoder, self.pipe.text_encoder_2) if m is not None]

    def __len__(self) -> int:
        return len(self._stored)

    def _offload(self) -> None:
        if self.device.type != "cpu":
            for encoder in self.encoders:
                encoder.to("cpu")

    def _encode(self, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for encoder in self.encoders:
            encoder.to(self.device)
        with torch.no_grad():  # FluxPipeline: `prompt` to CLIP (77 tokens), `prompt_2` to T5
            embeds, pooled, txt_ids = self.pipe.encode_prompt(
                prompt=[clip for clip, _ in pairs], prompt_2=[t5 for _, t5 in pairs], device=self.device,
                max_sequence_length=self.max_sequence_length)
        self.encoder_calls += 1
        return embeds, pooled, txt_ids

    def _store(self, prompts: list[tuple[str, str]]) -> None:
        embeds, pooled, txt_ids = self._encode(prompts)
        self._txt_ids = txt_ids.cpu()
        for i, prompt in enumerate(prompts):
            self._stored[prompt] = (embeds[i].cpu(), pooled[i].cpu())

    def precompute(self, prompts: Iterable[EncoderPrompt], batch_size: int = 8) -> None:
        """Encode every prompt not seen yet, ``batch_size`` at a time, in one trip of the encoders to the
        accelerator (nothing to do without ``cache``)."""
        missing = [p for p in dict.fromkeys(map(encoder_pair, prompts)) if p not in self._stored]
        if not missing or not self.cache:
            return
        logger.info("embedding %d distinct prompts", len(missing))
        try:
            for start in range(0, len(missing), batch_size):
                self._store(missing[start:start + batch_size])
        finally:
            self._offload()

    def __call__(self, prompts: list[EncoderPrompt]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prompt_embeds (B, T, D), pooled (B, P), txt_ids (T, 3)) of each prompt."""
        prompts = [encoder_pair(p) for p in prompts]
        if not self.cache:
            return self._encode(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._stored]
        if missing:
            try:
                self._store(missing)
            finally:
                self._offload()
        embeds = torch.stack([self._stored[p][0] for p in prompts]).to(self.device)
        pooled = torch.stack([self._stored[p][1] for p in prompts]).to(self.device)
        return embeds, pooled, self._txt_ids.to(self.device)


def export_clip_text(row: dict[str, Any]) -> str:
    """The text generation gave CLIP for an exported pair: its ``clip_caption`` (exports before it had none: the
    caption, which is what CLIP then read)."""
    return row.get("clip_caption") or row.get("caption") or ""


def dataset_prompts(dataset) -> list[EncoderPrompt]:
    """The text encoders' input of every sample, read without loading images where the data set lists its rows
    (``SFTFolderDataset.rows``: ``caption_encoder_prompt``, ``PreferenceExportDataset.items``); else by
    reading every sample."""
    if hasattr(dataset, "rows"):
        return [caption_encoder_prompt(row) for row in dataset.rows]
    if hasattr(dataset, "items") and isinstance(dataset.items, list):
        return [(export_clip_text(item["row"]), item["row"]["caption"] or "") for item in dataset.items]
    samples = (dataset[i] for i in range(len(dataset)))
    return [sample["prompt"] if sample.get("clip_prompt") is None else (sample["clip_prompt"], sample["prompt"])
            for sample in samples if "prompt" in sample]


class CachedLatentsDataset(Dataset):
    """``dataset`` with every ``pixel_values*`` replaced by ``latents*``, encoded once at construction.

    ``encode(pixels (1, 3, H, W)) -> latents (1, C, h, w)`` (scaled and shifted as the trainer expects); latents
    are kept on the CPU. ``bucket_ids`` are passed through for the bucketed sampler."""

    def __init__(self, dataset, encode: Callable[[torch.Tensor], torch.Tensor]):
        self.bucket_ids = getattr(dataset, "bucket_ids", None)
        self.samples: list[dict[str, Any]] = []
        for index in range(len(dataset)):
            sample = dict(dataset[index])
            for key in PIXEL_KEYS:
                if key in sample:
                    pixels = torch.as_tensor(sample.pop(key)).unsqueeze(0)
                    sample[key.replace("pixel_values", "latents")] = encode(pixels)[0].cpu()
            self.samples.append(sample)
        logger.info("cached the VAE latents of %d samples", len(self.samples))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.samples[index]
