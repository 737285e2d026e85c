"""The app's start-up logging (``app.configure_logging``) drops transformers' "requires torchvision ... falling
back to ...Pil" notice, as the ``idglow`` command does; without it transformers does print the notice."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from idglow.cli import TORCHVISION_FALLBACK

ROOT = Path(__file__).resolve().parents[1]
# Ask transformers for an image processor the way the app's models do: with no torchvision it falls back to the
# Pillow variant and says so once.
TRIGGER = "import transformers; transformers.CLIPImageProcessor; transformers.SiglipImageProcessor"


def _stderr(setup: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", f"{setup}; {TRIGGER}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    return proc.stderr


def test_transformers_prints_the_notice_without_the_filter():
    _skip_with_torchvision()
    assert TORCHVISION_FALLBACK in _stderr("import logging; logging.basicConfig(level=logging.WARNING)")


def test_app_start_up_logging_drops_the_notice():
    _skip_with_torchvision()
    err = _stderr("import app; app.configure_logging(); app.configure_logging()")
    assert TORCHVISION_FALLBACK not in err, err


def _skip_with_torchvision() -> None:
    """With torchvision installed transformers has nothing to fall back from: there is no notice to drop."""
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: transformers prints no fallback notice")
