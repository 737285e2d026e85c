"""Time per image: base FLUX vs IdGlow always-on vs IdGlow `age` window, 3 subjects, measured side by side.

    python benchmarks/bench_id_overhead.py                 # tiny + medium configs on the CPU
    python benchmarks/bench_id_overhead.py --device cuda --full   # FLUX.1-dev dimensions, random bf16 weights

Prints, per configuration, the measured time ratios against base and a FLOP-based estimate of the overhead
(the identity modules' FLOPs over the transformer's), plus peak GPU memory on CUDA. The three variants run
interleaved (base, on, age, base, …) on the same pipeline and the median is kept, so machine noise hits all
three alike. Process CPU time is printed beside wall time: on a machine shared with other work it is the
steadier of the two.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from idglow.adapter import IdGlowAdapter  # noqa: E402
from idglow.pipeline import IdGlowPipeline  # noqa: E402
from idglow.testing import random_embeddings, tiny_adapter, tiny_components  # noqa: E402

CONFIGS = {
    # name: (transformer kwargs, image size, steps)
    "tiny": (dict(num_layers=2, num_single_layers=2, heads=2, head_dim=16, text_dim=32), 64, 8),
    "medium": (dict(num_layers=4, num_single_layers=8, heads=4, head_dim=32, text_dim=64), 128, 8),
}


def transformer_flops(cfg, n_img: int, n_txt: int) -> float:
    """Forward FLOPs of one FLUX transformer call (linear layers + attention), per image."""
    d = cfg.num_attention_heads * cfg.attention_head_dim
    n = n_img + n_txt
    # double block: attention qkv+out for both streams (8·d²), two MLPs (2 × 8·d² with ratio 4), modulation (12·d²)
    double = 2 * n * (4 * d * d + 8 * d * d) + 2 * n * 12 * d * d + 4 * n * n * d
    # single block: qkv (3d²) + mlp in (4d²) + out (5d²), modulation (3d²)
    single = 2 * n * (3 * d * d + 4 * d * d + 5 * d * d) + 2 * n * 3 * d * d + 4 * n * n * d
    return cfg.num_layers * double + cfg.num_single_layers * single


def identity_flops(adapter: IdGlowAdapter, n_img: int, n_subjects: int) -> float:
    """Forward FLOPs of all identity modules for one transformer call, per image."""
    c = adapter.config
    t = n_subjects * c.num_tokens
    per_layer = 2 * n_img * c.inner_dim * c.attn_dim * 2 + 2 * t * c.inner_dim * c.attn_dim * 2 + 4 * n_img * t * c.attn_dim
    return len(adapter.layers) * per_layer


def build(config: str, device: str, dtype: torch.dtype):
    if config == "full":
        return build_full(device, dtype)
    kwargs, size, steps = CONFIGS[config]
    comps = tiny_components(0, **kwargs)
    adapter = tiny_adapter(comps["transformer"], zero_init=False) if config == "tiny" else IdGlowAdapter.from_transformer(
        comps["transformer"], id_dim=128, num_tokens=4, attn_dim=kwargs["heads"] * kwargs["head_dim"] // 4,
        num_heads=kwargs["heads"], resampler_hidden=256, zero_init=False,
    )
    pipe = IdGlowPipeline(**comps, adapter=adapter).to(device)
    return (pipe if dtype == torch.float32 else pipe.to(dtype)), size, steps


def build_full(device: str, dtype: torch.dtype):
    """FLUX.1-dev transformer and VAE dimensions with random weights; prompts enter as random embeddings."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    with torch.device(device):
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
            axes_dims_rope=[16, 56, 56],
        ).to(dtype)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
            latent_channels=16, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False,
            use_post_quant_conv=False,
        ).to(dtype)
        adapter = IdGlowAdapter.from_transformer(transformer, id_dim=512, zero_init=False).to(dtype)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = IdGlowPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                          tokenizer_2=None, transformer=transformer, adapter=adapter)
    return pipe, 1024, 28


def run_once(pipe, variant: str, size: int, steps: int, embeds, text) -> float:
    kwargs = dict(height=size, width=size, num_inference_steps=steps, seed=0, output_type="pil")
    if text is not None:
        kwargs.update(prompt_embeds=text[0], pooled_prompt_embeds=text[1])
    else:
        kwargs.update(prompt="a group photo of three people")
    if variant != "base":
        kwargs.update(subject_embeds=embeds, task="fusion" if variant == "always_on" else "age")
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
    sync()
    start, cpu_start = time.perf_counter(), time.process_time()
    pipe(**kwargs)
    sync()
    return time.perf_counter() - start, time.process_time() - cpu_start


def measure(config: str, device: str, dtype: torch.dtype, repeats: int) -> dict:
    torch.manual_seed(0)
    pipe, size, steps = build(config, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    embeds = random_embeddings(3, dim=pipe.adapter.config.id_dim).to(device, dtype)
    text = None
    if pipe.text_encoder is None:
        text = (torch.randn(1, 512, 4096, device=device, dtype=dtype), torch.randn(1, 768, device=device, dtype=dtype))
    variants = ["base", "always_on", "age"]
    times = {v: [] for v in variants}
    cpu_times = {v: [] for v in variants}
    peak = {}
    for v in variants:  # warm-up
        run_once(pipe, v, size, steps, embeds, text)
    for _ in range(repeats):
        for v in variants:
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            wall, cpu = run_once(pipe, v, size, steps, embeds, text)
            times[v].append(wall)
            cpu_times[v].append(cpu)
            if device.startswith("cuda"):
                peak[v] = max(peak.get(v, 0), torch.cuda.max_memory_allocated())
    med = {v: statistics.median(t) for v, t in times.items()}
    cpu_med = {v: statistics.median(t) for v, t in cpu_times.items()}
    n_img = (size // (pipe.vae_scale_factor * 2)) ** 2
    n_txt = 512 if text is not None else pipe.tokenizer_2.model_max_length
    base_flops = transformer_flops(pipe.transformer.config, n_img, n_txt)
    id_flops = identity_flops(pipe.adapter, n_img, 3)
    sigmas = pipe.scheduler.sigmas[:-1].tolist()
    age_fraction = sum(0.3 <= s <= 0.6 for s in sigmas) / len(sigmas)
    return {
        "config": config, "device": device, "dtype": str(dtype).replace("torch.", ""), "size": size,
        "steps": steps, "repeats": repeats, "seconds_per_image": med,
        "ratio_always_on": med["always_on"] / med["base"], "ratio_age": med["age"] / med["base"],
        "cpu_seconds_per_image": cpu_med,
        "cpu_ratio_always_on": cpu_med["always_on"] / cpu_med["base"], "cpu_ratio_age": cpu_med["age"] / cpu_med["base"],
        "flop_estimate_always_on": 1 + id_flops / base_flops,
        "flop_estimate_age": 1 + age_fraction * id_flops / base_flops,
        "age_window_step_fraction": age_fraction,
        "peak_memory_gb": {v: round(b / 2**30, 3) for v, b in peak.items()} or None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="FLUX.1-dev dimensions (GPU)")
    parser.add_argument("--configs", default="tiny,medium")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    configs = ["full"] if args.full else args.configs.split(",")
    results = []
    for config in configs:
        r = measure(config, args.device, dtype, args.repeats)
        results.append(r)
        mem = ""
        if r["peak_memory_gb"]:
            p = r["peak_memory_gb"]
            mem = f" peak_GB base={p['base']} always_on={p['always_on']} age={p['age']}"
        print(
            f"bench_id_overhead config={config} device={args.device} "
            f"base_s={r['seconds_per_image']['base']:.4f} "
            f"always_on/base={r['ratio_always_on']:.3f} (FLOP est {r['flop_estimate_always_on']:.3f}) "
            f"age/base={r['ratio_age']:.3f} (FLOP est {r['flop_estimate_age']:.3f}, "
            f"{r['age_window_step_fraction']:.2f} of steps in window) "
            f"process-CPU-time ratios: always_on/base={r['cpu_ratio_always_on']:.3f} age/base={r['cpu_ratio_age']:.3f}{mem}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
