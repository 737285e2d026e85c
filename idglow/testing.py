"""Helpers for tests and benchmarks. The tiny model itself lives in ``idglow.tiny`` (it is also the embedded
demo default); its builders are re-exported here for the tests that import them from this module."""

from __future__ import annotations

import torch

from idglow.faces.tiny_pack import build_tiny_insightface_pack
from idglow.tiny import tiny_adapter, tiny_components, tiny_pipeline, tiny_tokenizer

__all__ = ["build_tiny_insightface_pack", "random_embeddings", "tiny_adapter", "tiny_components", "tiny_pipeline",
           "tiny_tokenizer"]


def random_embeddings(n: int, dim: int = 128, seed: int = 0) -> torch.Tensor:
    """n unit-length random identity embeddings (N, dim)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    return x / x.norm(dim=-1, keepdim=True)
