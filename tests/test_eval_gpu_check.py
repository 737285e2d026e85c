"""benchmarks/gpu_check.py at toy size on the CPU (the same code paths as the H100 run), and its
identity-aware gradient checkpointing."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import gpu_check  # noqa: E402


def check_variants(section):
    assert set(section["seconds_per_image"]) == {"base", "always_on", "age"}, section
    assert section["ratio_vs_base"]["base"] == 1.0
    assert all(v > 0 for v in section["seconds_per_image"].values())


def test_gpu_check_tiny_on_cpu(tmp_path, capsys):
    out = tmp_path / "check.json"
    code = gpu_check.main(["--tiny", "--device", "cpu", "--steps", "1", "--sections", "eager,train",
                           "--out", str(out)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert code == 0, report
    assert set(report["sections"]) == {"eager", "train"}
    check_variants(report["sections"]["eager"])
    train = report["sections"]["train"]
    for kind in ("sft", "dpo"):
        assert train[kind]["seconds"] > 0 and train[kind]["loss"] == pytest.approx(train[kind]["loss"])
    assert train["lora_params"] > 0 and train["trainable_params"] > train["lora_params"]
    assert "always_on" in printed and "SFT step" in printed and "DPO step" in printed
    with pytest.raises(SystemExit):
        gpu_check.main(["--tiny", "--device", "cpu", "--sections", "eager,warp", "--out", str(out)])


@pytest.mark.slow
def test_gpu_check_tiny_cache_compile_and_budget(tmp_path, capsys):
    out = tmp_path / "check.json"
    gpu_check.main(["--tiny", "--device", "cpu", "--steps", "2", "--sections", "cache,compile",
                    "--compile-backend", "eager", "--out", str(out)])
    report = json.loads(out.read_text())
    check_variants(report["sections"]["cache"])
    check_variants(report["sections"]["compile"])
    compiled = report["sections"]["compile"]
    assert compiled["compile_s"] > 0
    # identity on and the age window switching: no graph break, nothing past the recompile limit, and the
    # timed rounds reuse the graphs compiled during warm-up
    assert compiled["graph_breaks"] == 0 and compiled["failed_compiles"] == 0, compiled
    assert compiled["recompiles_after_warmup"] == 0 and 0 < compiled["compiles"] <= compiled["recompile_limit"]
    gpu_check.main(["--tiny", "--device", "cpu", "--sections", "eager", "--budget-s", "0", "--out", str(out)])
    assert "time budget" in json.loads(out.read_text())["sections"]["eager"]["skipped"]
    capsys.readouterr()


def _adapter_grads(checkpoint_func, backward_in_thread: bool):
    """Gradients of the adapter for one identity-injected forward of a tiny transformer with gradient
    checkpointing; backward optionally runs in another thread (as the autograd engine does for CUDA)."""
    from idglow.testing import random_embeddings, tiny_adapter, tiny_components
    from idglow.training.modeling import IdGlowDenoiser, latent_image_ids

    comps = tiny_components(0)
    transformer = comps["transformer"]
    adapter = tiny_adapter(transformer)
    model = IdGlowDenoiser(transformer, adapter)
    transformer.requires_grad_(False)
    transformer.train()
    if checkpoint_func is not None:
        transformer.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_func)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 16, generator=g)
    loss = model(x, torch.tensor([0.5]), torch.randn(1, 8, 32, generator=g), torch.randn(1, 32, generator=g),
                 latent_image_ids(8, 8), random_embeddings(2).unsqueeze(0), torch.ones(1, 2)).pow(2).mean()
    if backward_in_thread:
        worker = threading.Thread(target=loss.backward)
        worker.start()
        worker.join()
    else:
        loss.backward()
    return {n: p.grad.clone() for n, p in adapter.named_parameters() if p.grad is not None}


def test_identity_checkpoint_recomputes_with_the_forward_injection():
    reference = _adapter_grads(None, backward_in_thread=False)
    assert reference
    from idglow.adapter import identity_checkpoint

    ours = _adapter_grads(identity_checkpoint, backward_in_thread=True)
    assert set(ours) == set(reference)
    for name, grad in reference.items():
        torch.testing.assert_close(ours[name], grad, rtol=1e-4, atol=1e-6, msg=name)
