"""SFT step vs DPO step on the same images: time ratio and peak memory.

The DPO batch is B pairs (2B images: winner and loser in one batched policy forward + backward, and one
no-grad reference forward); the SFT batch is the same 2B images. Configs: ``tiny`` (the test model),
``medium`` (a few blocks, 256 wide) and, on a GPU, ``flux`` (FLUX.1-dev dimensions, random bf16 weights,
LoRA rank 16, 1024×1024). Prints one line per config with the ratio.

    python benchmarks/bench_train.py [--configs tiny medium flux] [--steps 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS = {
    # name: transformer kwargs, latent channels, latent side, pairs per batch, lora rank, dtype
    "tiny": dict(layers=2, single=2, heads=2, head_dim=16, joint=32, pooled=32, channels=4, side=32, pairs=2,
                 lora=0, dtype="float32"),
    "medium": dict(layers=4, single=8, heads=8, head_dim=32, joint=256, pooled=128, channels=16, side=64,
                   pairs=2, lora=8, dtype="float32"),
    "flux": dict(layers=19, single=38, heads=24, head_dim=128, joint=4096, pooled=768, channels=16, side=128,
                 pairs=1, lora=16, dtype="bfloat16"),
}


def _model(cfg, device, dtype):
    from diffusers import FluxTransformer2DModel

    from idglow.adapter import IdGlowAdapter
    from idglow.training.modeling import IdGlowDenoiser

    hd = cfg["head_dim"]
    rope = (hd // 8, hd * 7 // 16, hd * 7 // 16) if hd == 128 else (hd // 2, hd // 4, hd // 4)
    with torch.device(device):
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4 * cfg["channels"], num_layers=cfg["layers"],
            num_single_layers=cfg["single"], attention_head_dim=hd, num_attention_heads=cfg["heads"],
            joint_attention_dim=cfg["joint"], pooled_projection_dim=cfg["pooled"], guidance_embeds=True,
            axes_dims_rope=rope,
        )
        if dtype != torch.float32:
            transformer = transformer.to(dtype)
        inner = cfg["heads"] * hd
        adapter = IdGlowAdapter.from_transformer(transformer, id_dim=512, num_tokens=4,
                                                 attn_dim=min(768, inner), num_heads=8 if inner >= 256 else 2,
                                                 resampler_hidden=min(1024, 2 * inner))
    return IdGlowDenoiser(transformer, adapter)


def _samples(cfg, n, dpo):
    g = torch.Generator().manual_seed(0)
    c, s = cfg["channels"], cfg["side"]
    out = []
    for _i in range(n):
        base = {"prompt_embeds": torch.randn(64, cfg["joint"], generator=g),
                "pooled_prompt_embeds": torch.randn(cfg["pooled"], generator=g),
                "id_embeds": torch.randn(3, 512, generator=g), "task": "fusion"}
        boxes = [(0.1, 0.2, 0.3, 0.5), (0.4, 0.2, 0.6, 0.5), (0.7, 0.2, 0.9, 0.5)]
        if dpo:
            pref = torch.zeros(9)
            pref[:6] = torch.tensor([1, -1, 1, 1, -1, 1])
            base.update(latents_0=torch.randn(c, s, s, generator=g), latents_1=torch.randn(c, s, s, generator=g),
                        face_boxes_0=boxes, face_boxes_1=boxes[::-1], preference=pref, strength=torch.ones(9))
        else:
            base.update(latents=torch.randn(c, s, s, generator=g), face_boxes=boxes)
        out.append(base)
    return out


def _time_trainer(trainer, batch, steps):
    device = trainer.accelerator.device

    def one(k):
        trainer.forward_backward(batch, trainer.step_generator(k))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    one(0)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for k in range(steps):
        one(k + 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = None  # no allocator statistics on CPU
    return (time.perf_counter() - t) / steps, peak


def run(name, steps):
    from idglow.training.config import DPOConfig, SFTConfig
    from idglow.training.data import PreferencePairDataset, collate_group_samples
    from idglow.training.trainer import DPOTrainer, SFTTrainer

    cfg = CONFIGS[name]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, cfg["dtype"])
    mp = "bf16" if dtype == torch.bfloat16 else "no"
    pairs = cfg["pairs"]
    common = dict(max_steps=steps, train_batch_size=pairs, report_to="none", checkpointing_steps=0,
                  lora_rank=cfg["lora"], mixed_precision=mp, gradient_checkpointing=name == "flux")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        dpo_samples = _samples(cfg, pairs, dpo=True)
        sft_samples = []
        for s in dpo_samples:  # the same 2B images as SFT samples
            for i in (0, 1):
                sft_samples.append({k: v for k, v in s.items() if not k.endswith(("_0", "_1"))
                                    and k not in ("preference", "strength")}
                                   | {"latents": s[f"latents_{i}"], "face_boxes": s[f"face_boxes_{i}"]})
        for kind in ("sft", "dpo"):
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            model = _model(cfg, device, dtype)
            if kind == "sft":
                config = SFTConfig(output_dir=tmp, **{**common, "train_batch_size": 2 * pairs})
                trainer = SFTTrainer(config, model, PreferencePairDataset(sft_samples))
                batch = collate_group_samples(sft_samples)
            else:
                config = DPOConfig(output_dir=tmp, **common)
                trainer = DPOTrainer(config, model, PreferencePairDataset(dpo_samples))
                batch = collate_group_samples(dpo_samples)
            results[kind] = _time_trainer(trainer, batch, steps)
            del trainer, model
    (ts, ms), (td, md) = results["sft"], results["dpo"]
    line = {"config": name, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "images_per_step": 2 * pairs, "sft_step_s": round(ts, 4), "dpo_step_s": round(td, 4),
            "dpo_over_sft": round(td / ts, 3),
            "peak_mem_gib_sft": None if ms is None else round(ms, 2),
            "peak_mem_gib_dpo": None if md is None else round(md, 2),
            "dpo_mem_over_sft": None if ms is None else round(md / ms, 3)}
    print(json.dumps(line), flush=True)
    return line


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    configs = args.configs or (["tiny", "medium", "flux"] if torch.cuda.is_available() else ["tiny", "medium"])
    for name in configs:
        run(name, args.steps)


if __name__ == "__main__":
    main()
