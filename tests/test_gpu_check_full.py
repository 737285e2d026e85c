"""benchmarks/gpu_check.py's ``trainer`` and ``pipeline`` sections at toy size on the CPU: the same code that
runs the real trainers and the memory modes at full size on one GPU."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import gpu_check  # noqa: E402
from benchmarks.gpu_check_full import quant_backend  # noqa: E402


@pytest.fixture
def fresh_accelerator_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


@pytest.mark.usefixtures("fresh_accelerator_state")
@pytest.mark.filterwarnings("ignore::FutureWarning")  # diffusers marks its quanto backend deprecated
def test_trainer_and_pipeline_sections_on_cpu(tmp_path, capsys):
    out = tmp_path / "check.json"
    code = gpu_check.main(["--tiny", "--device", "cpu", "--steps", "1", "--sections", "trainer,pipeline",
                           "--out", str(out)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    trainer, pipeline = report["sections"]["trainer"], report["sections"]["pipeline"]
    assert "error" not in trainer, trainer.get("traceback")
    assert "error" not in pipeline, pipeline.get("traceback")
    assert code == 0

    for run in ("sft", "sft_resumed", "dpo"):
        assert trainer[run]["frozen_dtype"] == "bfloat16" and trainer[run]["trainable_dtype"] == ["float32"]
        assert trainer[run]["losses"] and all(math.isfinite(v) for v in trainer[run]["losses"])
        assert len(trainer[run]["forward_backward_s"]) == len(trainer[run]["losses"])
    assert trainer["sft"]["steps"] == 2 and trainer["dpo"]["steps"] == 2
    # the second SFT run resumed from checkpoint-2: one step to reach 3
    assert trainer["sft_resumed"]["steps"] == 3 and len(trainer["sft_resumed"]["losses"]) == 1
    assert trainer["reloaded"]["lora_loaded"] and trainer["reloaded"]["finite"]
    assert trainer["reloaded"]["image_shape"] == [64, 64, 3]
    assert trainer["text_encoders_device"] == "cpu" and trainer["encoder_calls"] == 1  # two prompts, one batch

    gpu = pipeline["gpu"]
    assert gpu["seconds"] > 0 and gpu["max_diff_without_identity"] > 0.05
    assert gpu["max_diff_repeat"] < gpu["max_diff_without_identity"] / 10
    offload = pipeline["model_cpu_offload"]
    # the identity hooks survive offloading: the image is the on-device one, far from the image without identity
    assert offload["max_diff_vs_gpu"] < gpu["max_diff_without_identity"] / 10
    assert pipeline["sequential_cpu_offload"] == {"skipped": "needs an accelerator"}
    try:
        backend = quant_backend("auto")
    except ValueError as err:  # no backend installed: the error names the packages to install
        assert pipeline["quantized"] == {"error": f"{type(err).__name__}: {err}"}
    else:
        quantized = pipeline["quantized"]
        assert quantized["backend"] == backend and quantized["finite"], quantized
        assert quantized["max_diff_vs_gpu"] < gpu["max_diff_without_identity"]
    assert "trainer sft:" in printed and "pipeline model_cpu_offload:" in printed
