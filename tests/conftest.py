"""Test configuration: offline, quiet, deterministic."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_pipe():
    """One tiny IdGlowPipeline shared by read-only tests (no face analyzer)."""
    from idglow.testing import tiny_pipeline

    return tiny_pipeline(seed=0)


@pytest.fixture(scope="session")
def sample_portraits(tmp_path_factory):
    """Portraits cropped from the group photo bundled with insightface (person1..6.jpg) + bundled portraits."""
    from idglow.faces.dlib_backend import DlibAnalyzer
    from idglow.samples import write_sample_portraits

    out = tmp_path_factory.mktemp("samples")
    paths = write_sample_portraits(out, DlibAnalyzer())
    return {p.stem: p for p in paths}
