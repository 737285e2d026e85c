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
        if item.get_closest_marker("gpu") is not None:  # not keywords: they hold folder names too
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


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """A folder of photos for `idglow data build-sft`: one portrait with a caption, one blank image, one note."""
    import numpy as np
    from PIL import Image

    skimage = pytest.importorskip("skimage")
    pytest.importorskip("dlib")
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    (folder / "astronaut.txt").write_text("a portrait of an adult in a white suit")
    Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8)).save(folder / "blank.png")
    (folder / "notes.md").write_text("not a photo")
    return folder


@pytest.fixture(scope="session")
def sft_folder(photos, tmp_path_factory):
    """The SFT set `idglow data build-sft` makes from ``photos``."""
    from idglow.cli import main as cli_main

    out = tmp_path_factory.mktemp("sft") / "set"
    assert cli_main(["data", "build-sft", "--photos", str(photos), "--out", str(out), "--min-faces", "1"]) == 0
    return out
