"""Text-image and aesthetic scores from local weights only (nothing is downloaded).

``ClipScorer`` loads a transformers ``CLIPModel`` folder (config + weights + tokenizer + image processor) and
gives CLIPScore = 100 · max(cos(image, text), 0), the convention of Hessel et al. (2021) with w = 1 — as in
torchmetrics. ``AestheticScorer`` applies a LAION-style aesthetic head (a stack of linear layers on the
L2-normalised CLIP image embedding, e.g. ``sac+logos+ava1-l14-linearMSE.pth`` with a ViT-L/14 CLIP) from a
local file.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from idglow.errors import InputError, ModelFolderError

logger = logging.getLogger(__name__)

CLIP_FILES = ("config.json",)
HEAD_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


class ClipScorer:
    """CLIP image/text embeddings and CLIPScore from a local ``CLIPModel`` folder."""

    def __init__(self, folder: str | Path, device: str = "cpu"):
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        folder = Path(folder)
        missing = [f for f in CLIP_FILES if not (folder / f).is_file()]
        if not folder.is_dir() or missing:
            raise ModelFolderError(str(folder), missing or list(CLIP_FILES), what="CLIP model")
        try:
            self.model = CLIPModel.from_pretrained(folder, local_files_only=True).to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as err:
            raise InputError(f"--clip {folder}: cannot load a CLIPModel with its tokenizer and image processor "
                             f"({err})") from None
        self.device = device
        self.source = str(folder)
        self.max_length = min(int(self.model.config.text_config.max_position_embeddings),
                              int(getattr(self.tokenizer, "model_max_length", 77) or 77))
        self._torch = torch

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.projection_dim)

    def image_embeds(self, images: list):
        """L2-normalised image embeddings (N, projection_dim)."""
        torch = self._torch
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = self.model.get_image_features(pixel_values=pixels.to(self.device))
        out = out if isinstance(out, torch.Tensor) else out.pooler_output
        return torch.nn.functional.normalize(out.float(), dim=-1)

    def text_embeds(self, texts: list[str]):
        """L2-normalised text embeddings (N, projection_dim); texts are truncated to CLIP's length."""
        torch = self._torch
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        with torch.no_grad():
            out = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                               attention_mask=tokens["attention_mask"].to(self.device))
        out = out if isinstance(out, torch.Tensor) else out.pooler_output
        return torch.nn.functional.normalize(out.float(), dim=-1)

    def score(self, images: list, texts: list[str]) -> list[float]:
        """CLIPScore of each (image, text) pair: 100 · max(cos, 0)."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images for {len(texts)} texts")
        cos = (self.image_embeds(images) * self.text_embeds(texts)).sum(dim=-1)
        return [float(100.0 * max(c, 0.0)) for c in cos.tolist()]


def _load_state_dict(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def _linear_stack(state: dict) -> list[tuple[str, object, object]]:
    """The linear layers of a head state dict in order: every 2-d ``*.weight`` with its ``*.bias``, sorted by
    the layer numbers in the key (``layers.0``, ``layers.2``, …)."""
    weights = [k for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]

    def order(key: str):
        return [int(n) for n in re.findall(r"\d+", key)] or [0]

    layers = []
    for key in sorted(weights, key=order):
        prefix = key[: -len("weight")]
        layers.append((key, state[key].float(), state.get(prefix + "bias")))
    return layers


class AestheticScorer:
    """A LAION-style aesthetic predictor: linear layers (no activations, as in LAION's improved aesthetic
    predictor) applied to the L2-normalised CLIP image embedding.

    folder: a file with the head's state dict (.safetensors/.pth/.pt/.bin), or a folder with exactly one such
    file, optionally with the CLIP model it was trained on in ``clip/``; otherwise ``clip`` must be given.
    """

    def __init__(self, folder: str | Path, clip: ClipScorer | None = None, device: str = "cpu"):
        folder = Path(folder)
        if folder.is_file():
            head_file, clip_dir = folder, None
        elif folder.is_dir():
            heads = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in HEAD_SUFFIXES)
            if len(heads) != 1:
                raise ModelFolderError(str(folder), ["one head weights file (.safetensors, .pth, .pt or .bin)"],
                                       what="aesthetic predictor")
            head_file = heads[0]
            clip_dir = folder / "clip" if (folder / "clip" / "config.json").is_file() else None
        else:
            raise ModelFolderError(str(folder), ["head weights file"], what="aesthetic predictor")
        if clip_dir is not None:
            clip = ClipScorer(clip_dir, device=device)
        if clip is None:
            raise InputError(f"--aesthetic {folder}: the aesthetic head needs CLIP image embeddings; pass --clip DIR "
                             "or put the CLIP model in a clip/ subfolder")
        self.clip = clip
        self.source = str(head_file)
        self.layers = _linear_stack(_load_state_dict(head_file))
        if not self.layers:
            raise InputError(f"--aesthetic {head_file}: no linear layer weights found")
        in_dim = self.layers[0][1].shape[1]
        if in_dim != clip.embedding_dim:
            raise InputError(
                f"--aesthetic {head_file} expects {in_dim}-d CLIP embeddings, but the CLIP model gives "
                f"{clip.embedding_dim}-d"
            )
        out_dim = self.layers[-1][1].shape[0]
        if out_dim != 1:
            raise InputError(f"--aesthetic {head_file}: the last layer gives {out_dim} values, expected 1")
        for (k1, w1, _), (k2, w2, _) in zip(self.layers, self.layers[1:]):
            if w1.shape[0] != w2.shape[1]:
                raise InputError(f"--aesthetic {head_file}: {k1} gives {w1.shape[0]} values but {k2} takes "
                                 f"{w2.shape[1]}")

    def score(self, images: list) -> list[float]:
        x = self.clip.image_embeds(images).cpu()
        for _, weight, bias in self.layers:
            x = x @ weight.T
            if bias is not None:
                x = x + bias.float()
        return [float(v) for v in x.reshape(-1).tolist()]
