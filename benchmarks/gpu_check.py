"""GPU check: the full FLUX.1-dev architecture with random bf16 weights, measured in one run on one GPU.

    python benchmarks/gpu_check.py --out gpu_check.json                      # H100: about 5 minutes
    python benchmarks/gpu_check.py --tiny --device cpu --out /tmp/check.json  # the same code at toy size

Sections, in order (each one is timed and guarded; an error is recorded and the next section runs):

1. ``eager``   — 1024², 28 steps, 3 subjects: base FLUX vs IdGlow always-on vs IdGlow ``age`` window
                 (seconds per image, ratios against base, peak memory);
2. ``cache``   — the same with diffusers' FirstBlockCache (``diffusers.hooks.apply_first_block_cache``);
3. ``train``   — one SFT step and one group-DPO step at full size: adapter + peft LoRA on the transformer,
                 gradient checkpointing, losses from ``idglow.losses`` (seconds, peak memory, loss);
4. ``trainer`` — the real SFT and DPO trainers through accelerate (bf16, gradient checkpointing, LoRA, prompt
                 cache with T5-XXL/CLIP-L text encoders) on a generated data folder: checkpoint, resume, adapter +
                 LoRA reloaded into the pipeline, one image (``benchmarks/gpu_check_full.py``);
5. ``compile`` — the same three variants with the transformer's repeated blocks compiled by torch.compile
                 (compile time reported separately);
6. ``pipeline`` — prompt text → image with the text encoders at FLUX's dims in each memory mode: on the GPU,
                 model CPU offload, sequential CPU offload, int8 transformer (torchao / optimum-quanto) + offload.

A section that would start after ``--budget-s`` seconds is skipped and marked so. Prints one table and writes
the figures as JSON to ``--out``. Sections 1–5 take prompts as random embeddings or through the prompt cache;
images are decoded by a random VAE of FLUX's shape. The figures are timings of the architecture, not of image quality.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from idglow.adapter import identity_checkpoint  # noqa: E402

VARIANTS = ("base", "always_on", "age")
SECTIONS = ("eager", "cache", "train", "trainer", "compile", "pipeline")
NUM_SUBJECTS = 3


# --- building ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build modules directly in ``dtype`` (a 12B-parameter model is never materialised in float32)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(tiny: bool, device: str, dtype: torch.dtype):
    """An IdGlowPipeline without text encoders: FLUX.1-dev dimensions, or toy size with ``tiny``."""
    from idglow.pipeline import IdGlowPipeline
    from idglow.testing import tiny_adapter, tiny_components

    torch.manual_seed(0)
    if tiny:
        comps = tiny_components(0)
        adapter = tiny_adapter(comps["transformer"], zero_init=False)
        pipe = IdGlowPipeline(scheduler=comps["scheduler"], vae=comps["vae"], text_encoder=None, tokenizer=None,
                              text_encoder_2=None, tokenizer_2=None, transformer=comps["transformer"],
                              adapter=adapter)
        pipe = pipe.to(device=device, dtype=dtype)
    else:
        from benchmarks.bench_id_overhead import build_full

        with default_dtype(dtype):
            pipe, _, _ = build_full(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.transformer, pipe.vae, pipe.adapter):
        module.requires_grad_(False)
        module.eval()
    return pipe


def text_inputs(pipe, batch: int, length: int, device: str, dtype: torch.dtype):
    cfg = pipe.transformer.config
    g = torch.Generator("cpu").manual_seed(1)
    prompt = torch.randn(batch, length, cfg.joint_attention_dim, generator=g).to(device, dtype)
    pooled = torch.randn(batch, cfg.pooled_projection_dim, generator=g).to(device, dtype)
    return prompt, pooled


# --- measuring ----------------------------------------------------------------------------------------------


class Meter:
    """Wall time with device synchronisation, and peak device memory."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else None

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def generate(pipe, variant: str, steps: int, size: int, text, embeds) -> None:
    kwargs = dict(prompt_embeds=text[0], pooled_prompt_embeds=text[1], height=size, width=size,
                  num_inference_steps=steps, seed=0, output_type="pil")
    if variant != "base":
        kwargs.update(subject_embeds=embeds, task="fusion" if variant == "always_on" else "age")
    pipe(**kwargs)


def time_variants(pipe, meter: Meter, args, text, embeds, warmup_steps: int) -> dict:
    """Warm every variant up, then time ``repeats`` interleaved rounds of base / always_on / age."""
    start = time.perf_counter()
    for variant in VARIANTS:
        generate(pipe, variant, warmup_steps, args.size, text, embeds)
    meter.sync()
    warmup_s = time.perf_counter() - start
    times = {v: [] for v in VARIANTS}
    peak = {}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            meter.reset_peak()
            meter.sync()
            t0 = time.perf_counter()
            generate(pipe, variant, args.steps, args.size, text, embeds)
            meter.sync()
            times[variant].append(time.perf_counter() - t0)
            peak[variant] = meter.peak_gb()
    med = {v: statistics.median(t) for v, t in times.items()}
    return {
        "seconds_per_image": med,
        "ratio_vs_base": {v: med[v] / med["base"] for v in VARIANTS},
        "peak_memory_gb": peak,
        "warmup_s": warmup_s,
    }


# --- sections -----------------------------------------------------------------------------------------------


def section_eager(pipe, meter, args, text, embeds) -> dict:
    return time_variants(pipe, meter, args, text, embeds, warmup_steps=2)


def section_cache(pipe, meter, args, text, embeds) -> dict:
    from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, apply_first_block_cache
    from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK

    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=args.cache_threshold))
    try:
        result = time_variants(pipe, meter, args, text, embeds, warmup_steps=2)
    finally:
        registry = HookRegistry.check_if_exists_or_initialize(pipe.transformer)
        registry.remove_hook(_FBC_LEADER_BLOCK_HOOK, recurse=True)
        registry.remove_hook(_FBC_BLOCK_HOOK, recurse=True)
    result["threshold"] = args.cache_threshold
    return result


def dynamo_counts() -> dict:
    """TorchDynamo's counters since the last reset: graph breaks, graphs, frame compiles (first compiles and
    recompiles) and compiles that failed (a frame past the recompile limit runs uncompiled)."""
    from torch._dynamo.utils import counters

    return {"graph_breaks": int(sum(counters["graph_break"].values())),
            "unique_graphs": int(counters["stats"]["unique_graphs"]),
            "compiles": int(counters["frames"]["total"]),
            "failed_compiles": int(counters["frames"]["total"] - counters["frames"]["ok"])}


def section_compile(pipe, meter, args, text, embeds) -> dict:
    """The three variants with the repeated blocks compiled (TorchDynamo's default recompile limit kept)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    pipe.transformer.compile_repeated_blocks(fullgraph=False, backend=args.compile_backend)
    # 4 warm-up steps reach σ inside the age window, so both gate states are compiled before timing.
    start = time.perf_counter()
    for variant in VARIANTS:
        generate(pipe, variant, 4, args.size, text, embeds)
    meter.sync()
    compile_s = time.perf_counter() - start
    warm = dynamo_counts()
    result = time_variants(pipe, meter, args, text, embeds, warmup_steps=4)
    result.pop("warmup_s")
    counts = dynamo_counts()
    result.update(compile_s=compile_s, backend=args.compile_backend, **counts,
                  recompiles_after_warmup=counts["compiles"] - warm["compiles"],
                  recompile_limit=int(torch._dynamo.config.recompile_limit),
                  graph_break_reasons=sorted({r.splitlines()[0][:160] for r in counters["graph_break"]}))
    return result


def _face_masks(batch: int, side: int, device) -> torch.Tensor:
    """(batch, NUM_SUBJECTS, side·side) token masks: three face boxes side by side."""
    masks = torch.zeros(batch, NUM_SUBJECTS, side, side, device=device)
    w = max(1, side // 8)
    for j in range(NUM_SUBJECTS):
        x0 = (j + 1) * side // (NUM_SUBJECTS + 1) - w // 2
        masks[:, j, side // 3: side // 3 + w, x0: x0 + w] = 1.0
    return masks.reshape(batch, NUM_SUBJECTS, side * side)


def _prepare_training(pipe, lora_rank: int):  # noqa: ANN001, ANN202
    """The denoiser with LoRA + adapter trainable and gradient checkpointing on; its trainable parameters
    and the number of LoRA parameters."""
    from idglow.training.modeling import IdGlowDenoiser

    transformer, adapter = pipe.transformer, pipe.adapter
    model = IdGlowDenoiser(transformer, adapter)
    model.add_lora(lora_rank)
    adapter.requires_grad_(True)
    transformer.train()
    adapter.train()
    transformer.enable_gradient_checkpointing(gradient_checkpointing_func=identity_checkpoint)
    model.make_reference()
    params = [p for p in model.parameters() if p.requires_grad]
    lora_params = sum(p.numel() for n, p in transformer.named_parameters() if p.requires_grad)
    return model, params, lora_params


def _release_training(pipe, model, optimizer, params: list, meter) -> None:  # noqa: ANN001
    """Undo :func:`_prepare_training` and free the optimizer state before the next section."""
    transformer, adapter = pipe.transformer, pipe.adapter
    optimizer.zero_grad(set_to_none=True)
    optimizer.state.clear()
    params.clear()
    transformer.disable_gradient_checkpointing()
    with contextlib.suppress(ValueError, AttributeError):
        transformer.delete_adapters(["default"])
    transformer.requires_grad_(False)
    adapter.requires_grad_(False)
    transformer.eval()
    adapter.eval()
    model.ref_adapter = None
    meter.free()


class _TrainingLosses:
    """Random training batches for the tiny or full model at one σ inside the age window, and the SFT and
    group-DPO losses on them."""

    def __init__(self, pipe, model, size: int, text, embeds, sigma: float):  # noqa: ANN001
        from idglow.schedule import window_for_task
        from idglow.training.modeling import latent_image_ids

        transformer = pipe.transformer
        self.pipe, self.model, self.text, self.embeds, self.sigma = pipe, model, text, embeds, sigma
        self.device, self.dtype = transformer.device, transformer.dtype
        side_latent = size // pipe.vae_scale_factor
        self.channels = transformer.config.in_channels // 4
        self.side = side_latent // 2
        self.seq = self.side * self.side
        self.img_ids = latent_image_ids(side_latent, side_latent, device=self.device, dtype=self.dtype)
        self.g = torch.Generator("cpu").manual_seed(2)
        self.window = window_for_task("age")

    def inputs(self, batch: int):  # noqa: ANN201
        shape = (batch, self.seq, self.channels * 4)
        latents = torch.randn(*shape, generator=self.g).to(self.device, self.dtype)
        noise = torch.randn(*shape, generator=self.g).to(self.device, self.dtype)
        sigmas = torch.full((batch,), self.sigma, device=self.device)
        prompt, pooled = text_inputs(self.pipe, batch, self.text[0].shape[1], self.device, self.dtype)
        ids = self.embeds.reshape(1, NUM_SUBJECTS, -1).expand(batch, -1, -1)
        gate = float(self.window.gate(self.sigma))
        scales = torch.full((batch, NUM_SUBJECTS), gate, device=self.device)
        return latents, noise, sigmas, prompt, pooled, ids, scales

    def sft(self, batch: int) -> torch.Tensor:
        from idglow.losses import add_flow_noise, flow_target, sft_loss

        latents, noise, sigmas, prompt, pooled, ids, scales = self.inputs(batch)
        noisy = add_flow_noise(latents, noise, sigmas)
        pred = self.model(noisy, sigmas, prompt, pooled, self.img_ids, ids, scales)
        face = _face_masks(batch, self.side, self.device).amax(dim=1).unsqueeze(-1)  # (B, L, 1)
        gates = torch.full((batch,), float(self.window.gate(self.sigma)), device=self.device)
        return sft_loss(pred, flow_target(latents, noise), sigmas, face, face_gate=gates).loss

    def dpo(self, batch_pairs: int) -> torch.Tensor:
        from idglow.losses import add_flow_noise, flow_target, group_dpo_loss, region_errors

        # Rows [0, B) are the preferred images w, rows [B, 2B) the others l: same prompt, identities, ε and σ.
        b, device = batch_pairs, self.device
        latents, noise, sigmas, prompt, pooled, ids, scales = self.inputs(2 * b)
        noise[b:] = noise[:b]
        noisy = add_flow_noise(latents, noise, sigmas)
        target = flow_target(latents, noise)
        overall = torch.ones(2 * b, 1, self.seq, device=device)
        masks = torch.cat([overall, _face_masks(2 * b, self.side, device)], dim=1)  # overall + identity_j
        pred = self.model(noisy, sigmas, prompt, pooled, self.img_ids, ids, scales)
        with torch.no_grad():
            ref = self.model(noisy, sigmas, prompt, pooled, self.img_ids, ids, scales, reference=True)
        err, err_ref = region_errors(pred, target, masks), region_errors(ref, target, masks)
        alpha = torch.ones(b, masks.shape[1], device=device)
        return group_dpo_loss(err[:b], err[b:], err_ref[:b], err_ref[b:], alpha, 1.0, beta=500.0, gamma=0.5).loss


def _timed_step(meter, params: list, optimizer, batch: int, compute_loss) -> dict:  # noqa: ANN001
    """Two optimizer steps on ``compute_loss(batch)``; the second one's time, peak memory and loss (the
    first allocates the optimizer state)."""
    times, losses = [], []
    for _ in range(2):
        meter.reset_peak()
        meter.sync()
        t0 = time.perf_counter()
        loss = compute_loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        meter.sync()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    return {"seconds": times[-1], "first_step_s": times[0], "peak_memory_gb": meter.peak_gb(),
            "loss": losses[-1], "batch": batch}


def section_train(pipe, meter, args, text, embeds) -> dict:
    """One SFT step and one group-DPO step with LoRA + adapter trainable, gradient checkpointing on."""
    model, params, lora_params = _prepare_training(pipe, args.lora_rank)
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    sigma = 0.45  # inside the age window: identity injection and the face term are both active
    losses = _TrainingLosses(pipe, model, args.size, text, embeds, sigma)
    result: dict = {"lora_rank": args.lora_rank, "trainable_params": sum(p.numel() for p in params),
                    "lora_params": lora_params, "sigma": sigma, "tokens": losses.seq}
    try:
        result["sft"] = _timed_step(meter, params, optimizer, 1, losses.sft)
        result["dpo"] = _timed_step(meter, params, optimizer, 1, losses.dpo)
    finally:
        _release_training(pipe, model, optimizer, params, meter)
    return result


# --- report -------------------------------------------------------------------------------------------------


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def table(report: dict) -> str:
    s = report["sections"]
    lines = [
        f"gpu_check device={report['device_name']} dtype={report['dtype']} size={report['size']} "
        f"steps={report['steps']} subjects={NUM_SUBJECTS} total_s={report['total_s']:.0f}",
        f"{'variant':<11}{'eager s/img':>12}{'x base':>8}{'peak GB':>9}{'FBCache s/img':>15}{'x base':>8}"
        f"{'compiled s/img':>16}{'x base':>8}",
    ]
    for v in VARIANTS:
        row = [f"{v:<11}"]
        for name, width in (("eager", 12), ("cache", 15), ("compile", 16)):
            sec = s.get(name, {})
            ok = "seconds_per_image" in sec
            row.append(f"{_fmt(sec['seconds_per_image'][v] if ok else None):>{width}}")
            row.append(f"{_fmt(sec['ratio_vs_base'][v] if ok else None, '.3f'):>8}")
            if name == "eager":
                row.append(f"{_fmt(sec['peak_memory_gb'][v] if ok else None):>9}")
        lines.append("".join(row))
    comp = s.get("compile", {})
    if "compile_s" in comp:
        lines.append(f"compile (warm-up of all variants): {comp['compile_s']:.1f} s, backend {comp['backend']}, "
                     f"{comp['unique_graphs']} graphs, {comp['graph_breaks']} graph breaks, {comp['compiles']} "
                     f"compiles ({comp['failed_compiles']} past the recompile limit "
                     f"{comp['recompile_limit']}), {comp['recompiles_after_warmup']} recompiles after warm-up")
    train = s.get("train", {})
    for kind in ("sft", "dpo"):
        if kind in train:
            t = train[kind]
            lines.append(f"{kind.upper()} step (LoRA r={train['lora_rank']}, {train['tokens']} tokens, batch "
                         f"{t['batch']}{' pair' if kind == 'dpo' else ''}): {t['seconds']:.2f} s, peak "
                         f"{_fmt(t['peak_memory_gb'])} GB, loss {t['loss']:.4g}")
    from benchmarks.gpu_check_full import summary_lines

    lines.extend(summary_lines(s))
    for name in SECTIONS:
        if name in s and ("error" in s[name] or "skipped" in s[name]):
            lines.append(f"{name}: {s[name].get('error') or s[name].get('skipped')}")
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, with the tiny or full-size defaults filled in; ``args.sections`` becomes a list."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, metavar="FILE", help="write the figures as JSON here")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy-size model (tests, CPU)")
    parser.add_argument("--steps", type=int, help="default: 28 (tiny: 4)")
    parser.add_argument("--size", type=int, help="default: 1024 (tiny: 64)")
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds per section")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    parser.add_argument("--cache-threshold", type=float, default=0.2, help="FirstBlockCache threshold")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--memory-steps", type=int, help="denoising steps per memory mode (default 4; tiny: 2)")
    parser.add_argument("--quant-backend", choices=["auto", "torchao", "quanto"], default="auto",
                        help="diffusers quantization backend of the int8 transformer (auto: torchao, else quanto)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="skip sections that would start later than this (seconds since start)")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but no CUDA device is available (use --tiny --device cpu to try the code)")
    args.steps = args.steps or (4 if args.tiny else 28)
    args.size = args.size or (64 if args.tiny else 1024)
    args.memory_steps = args.memory_steps or (2 if args.tiny else 4)
    if args.repeats < 1 or args.steps < 1:
        parser.error("--repeats and --steps must be at least 1")
    return args


def _report_head(args: argparse.Namespace, pipe, dtype: torch.dtype, build_s: float) -> dict:  # noqa: ANN001
    """The report's description of the machine, the model and the settings (sections still empty)."""
    cuda = args.device.startswith("cuda")
    return {
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""), "tiny": args.tiny,
        "size": args.size, "steps": args.steps, "subjects": NUM_SUBJECTS, "repeats": args.repeats,
        "transformer_params": sum(p.numel() for p in pipe.transformer.parameters()),
        "adapter_params": sum(p.numel() for p in pipe.adapter.parameters()),
        "build_s": build_s,
        "sections": {},
    }


def _run_sections(
    report: dict, args: argparse.Namespace, pipe, meter: Meter, text, embeds, start: float  # noqa: ANN001
) -> None:
    """Run the chosen sections in SECTIONS order into ``report["sections"]``; a section that would start
    after the time budget is skipped, and a failing one records its error without stopping the others."""
    from benchmarks.gpu_check_full import section_pipeline, section_trainer

    runners = {"eager": section_eager, "cache": section_cache, "train": section_train, "trainer": section_trainer,
               "compile": section_compile, "pipeline": section_pipeline}
    for name in SECTIONS:
        if name not in args.sections:
            continue
        elapsed = time.perf_counter() - start
        if elapsed > args.budget_s:
            report["sections"][name] = {"skipped": f"time budget: {elapsed:.0f} s > {args.budget_s:.0f} s"}
            continue
        t0 = time.perf_counter()
        try:
            report["sections"][name] = runners[name](pipe, meter, args, text, embeds)
        except Exception as err:  # one failing section must not hide the others' figures
            report["sections"][name] = {"error": f"{type(err).__name__}: {err}",
                                        "traceback": traceback.format_exc(limit=8)}
        report["sections"][name]["section_s"] = time.perf_counter() - t0
        meter.free()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    start = time.perf_counter()
    meter = Meter(args.device)
    pipe = build(args.tiny, args.device, dtype)
    text = text_inputs(pipe, 1, 16 if args.tiny else 512, args.device, dtype)
    from idglow.testing import random_embeddings

    embeds = random_embeddings(NUM_SUBJECTS, dim=pipe.adapter.config.id_dim).to(args.device, dtype)
    report = _report_head(args, pipe, dtype, time.perf_counter() - start)
    _run_sections(report, args, pipe, meter, text, embeds, start)
    report["total_s"] = time.perf_counter() - start
    print(table(report), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0 if not any("error" in s for s in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
