"""The two ``gpu_check`` sections that run IdGlow's own full path rather than hand-built steps.

``trainer``  — the real ``SFTTrainer`` and ``DPOTrainer`` through accelerate (bf16 mixed precision, gradient
               checkpointing, LoRA, the prompt-embedding cache with text encoders at FLUX's dims) for a few steps
               on a generated SFT data folder; a checkpoint is saved and a second run resumes from it; the saved
               adapter + LoRA are loaded back into the pipeline and one image is generated. Reports
               ``frozen_dtype``, ``trainable_dtype``, step times, peak memory and losses.
``pipeline`` — the whole pipeline with text encoders at FLUX's real dims (T5-XXL, CLIP-L; random init) from
               prompt text to image, in each memory mode: everything on the GPU, model CPU offload, sequential
               CPU offload (identity hooks kept; the image must equal the on-GPU one) and an int8 weight-only
               transformer through a diffusers quantization backend (torchao, else optimum-quanto) with model
               offload. Reports seconds and peak memory per mode. Moves the shared transformer off the GPU, so it
               runs last.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

NUM_SUBJECTS = 3
PROMPTS = ["a group photo of three friends in a park", "three people smiling at the camera in a garden"]


# --- text encoders and data -----------------------------------------------------------------------------------


def text_encoders(tiny: bool, device: str, dtype: torch.dtype) -> dict:
    """CLIP-L and T5-XXL text encoders (random init) at FLUX.1-dev's dims, built on ``device`` in ``dtype`` and
    left on the CPU; word-level tokenizers built in memory. ``tiny``: the tiny model's encoders."""
    from idglow.tiny import tiny_components, tiny_tokenizer

    if tiny:
        comps = tiny_components(0)
        parts = {k: comps[k] for k in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")}
        for name in ("text_encoder", "text_encoder_2"):
            parts[name].to(dtype)
        return parts
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bf16 directly: T5-XXL is never materialised in float32
    try:
        with torch.device(device):  # random init on the GPU takes seconds, on the CPU minutes
            clip = CLIPTextModel(CLIPTextConfig(
                vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                num_hidden_layers=12, max_position_embeddings=77, projection_dim=768, bos_token_id=0, pad_token_id=1,
                eos_token_id=2,
            ))
            t5 = T5EncoderModel(T5Config(
                vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                feed_forward_proj="gated-gelu", is_encoder_decoder=False, pad_token_id=1, eos_token_id=2,
            ))
    finally:
        torch.set_default_dtype(previous)
    return {"text_encoder": clip.eval().requires_grad_(False).to("cpu"), "tokenizer": tiny_tokenizer(77),
            "text_encoder_2": t5.eval().requires_grad_(False).to("cpu"), "tokenizer_2": tiny_tokenizer(512)}


def with_text_encoders(pipe, encoders: dict):
    """An IdGlowPipeline sharing ``pipe``'s transformer, VAE and adapter, with these text encoders."""
    from idglow.pipeline import IdGlowPipeline

    full = IdGlowPipeline(scheduler=pipe.scheduler, vae=pipe.vae, transformer=pipe.transformer, adapter=pipe.adapter,
                          **encoders)
    full.set_progress_bar_config(disable=True)
    return full


def write_sft_folder(root: Path, n: int, size: int, id_dim: int) -> Path:
    """A data folder in the format of ``idglow data build-sft``: n random images with three faces each."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        image = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        Image.fromarray(image).resize((size, size), Image.BICUBIC).save(root / f"{i}.png")
        subjects = []
        for j in range(NUM_SUBJECTS):
            x0 = 0.1 + 0.3 * j
            embeds = rng.standard_normal((2, id_dim)).astype(np.float32)
            embeds /= np.linalg.norm(embeds, axis=1, keepdims=True)
            subjects.append({"bbox": [x0, 0.2, x0 + 0.2, 0.5], "embeddings": embeds.tolist(), "target_age": None})
        rows.append({"image": f"{i}.png", "width": size, "height": size, "prompt": PROMPTS[i % len(PROMPTS)],
                     "task": "fusion", "subjects": subjects})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def preference_pairs(dataset) -> list[dict]:
    """DPO samples from consecutive images of an SFT folder: image 0 preferred on overall and identity_0."""
    pairs = []
    for i in range(0, len(dataset) - 1, 2):
        a, b = dataset[i], dataset[i + 1]
        preference, strength = torch.zeros(9), torch.ones(9)
        preference[0], preference[3] = 1.0, 1.0
        pairs.append({"pixel_values_0": a["pixel_values"], "pixel_values_1": b["pixel_values"],
                      "face_boxes_0": a["face_boxes"], "face_boxes_1": b["face_boxes"], "prompt": a["prompt"],
                      "id_embeds": a["id_embeds"], "task": "fusion", "preference": preference,
                      "strength": strength})
    return pairs


# --- trainer ------------------------------------------------------------------------------------------------------


def _timed(trainer, meter) -> list[float]:
    """Wrap ``trainer.forward_backward`` to record the seconds of every micro-step."""
    times: list[float] = []
    inner = trainer.forward_backward

    def forward_backward(batch, generator):
        meter.sync()
        t0 = time.perf_counter()
        out = inner(batch, generator)
        meter.sync()
        times.append(time.perf_counter() - t0)
        return out

    trainer.forward_backward = forward_backward
    return times


def _run(trainer, meter) -> dict:
    meter.reset_peak()
    times = _timed(trainer, meter)
    t0 = time.perf_counter()
    out = trainer.train()
    meter.sync()
    trainable = {str(p.dtype).replace("torch.", "") for p in trainer.unwrapped.parameters() if p.requires_grad}
    return {"steps": out.global_step, "losses": [r["loss"] for r in out.log_history],
            "forward_backward_s": times, "train_s": time.perf_counter() - t0, "peak_memory_gb": meter.peak_gb(),
            "frozen_dtype": str(trainer.frozen_dtype).replace("torch.", ""), "trainable_dtype": sorted(trainable)}


def _release(model) -> None:
    """Undo what a trainer did to the shared transformer and adapter (LoRA, checkpointing, dtype, train mode)."""
    transformer, adapter = model.transformer, model.adapter
    transformer.disable_gradient_checkpointing()
    with contextlib.suppress(ValueError, AttributeError):
        transformer.delete_adapters(["default"])
    transformer.requires_grad_(False).eval()
    adapter.requires_grad_(False).eval()
    model.ref_adapter = None


def _trainer_config(cls, out: Path, args, **kw):
    options = dict(output_dir=str(out), resolution=args.size, mixed_precision="bf16", gradient_checkpointing=True,
                   lora_rank=args.lora_rank, report_to="none", learning_rate=1e-5, train_batch_size=1,
                   checkpointing_steps=0, seed=0)
    return cls(**{**options, **kw})


def section_trainer(pipe, meter, args, text, embeds) -> dict:
    """SFT (with checkpoint + resume) and DPO through the real trainers; reload adapter + LoRA; one image."""
    from accelerate.state import AcceleratorState

    from idglow.training.caching import PromptEmbedder, dataset_prompts
    from idglow.training.config import DPOConfig, SFTConfig
    from idglow.training.data import PreferencePairDataset
    from idglow.training.files import SFTFolderDataset
    from idglow.training.modeling import IdGlowDenoiser
    from idglow.training.trainer import DPOTrainer, SFTTrainer

    device, dtype = pipe.transformer.device, pipe.transformer.dtype
    AcceleratorState._reset_state()  # the mixed precision of an earlier Accelerator in this process is fixed
    full = with_text_encoders(pipe, text_encoders(args.tiny, args.device, dtype))
    embedder = PromptEmbedder(full, device, max_sequence_length=512)
    result: dict = {"lora_rank": args.lora_rank}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = SFTFolderDataset(write_sft_folder(root / "data", 4, args.size, pipe.adapter.config.id_dim),
                                resolution=args.size)
        model = IdGlowDenoiser(pipe.transformer, pipe.adapter)
        try:
            t0 = time.perf_counter()
            sft = SFTTrainer(_trainer_config(SFTConfig, root / "sft", args, max_steps=2, checkpointing_steps=2),
                             model, data, vae=pipe.vae, encode_prompt=embedder)
            embedder.precompute(dataset_prompts(data))
            result["prompt_embedding_s"] = time.perf_counter() - t0
            result["text_encoders_device"] = str(full.text_encoder_2.device)
            result["sft"] = _run(sft, meter)
            _release(model)
            resumed = SFTTrainer(_trainer_config(SFTConfig, root / "sft", args, max_steps=3,
                                                 resume_from_checkpoint="latest"),
                                 model, data, vae=pipe.vae, encode_prompt=embedder)
            result["sft_resumed"] = _run(resumed, meter)
            saved = resumed.save_model()
            _release(model)
            dpo = DPOTrainer(_trainer_config(DPOConfig, root / "dpo", args, max_steps=2, beta=500.0, gamma=0.5),
                             model, PreferencePairDataset(preference_pairs(data)), vae=pipe.vae,
                             encode_prompt=embedder)
            result["dpo"] = _run(dpo, meter)
            _release(model)
            result["reloaded"] = generate_with_saved(full, embedder, saved, args, embeds, meter)
        finally:  # the trainers cast the frozen modules to bf16 and the adapter to float32
            _release(model)
            for module in (pipe.transformer, pipe.vae, pipe.adapter):
                module.to(device, dtype)
            meter.free()
    result["encoder_calls"] = embedder.encoder_calls
    return result


def generate_with_saved(full, embedder, saved: Path, args, embeds, meter) -> dict:
    """Load the saved adapter and LoRA into the pipeline, generate one image, then restore the pipeline."""
    from idglow.adapter import IdGlowAdapter

    dtype, device = full.transformer.dtype, full.transformer.device
    original = full.adapter
    trained = IdGlowAdapter.from_pretrained(str(saved / "adapter"), torch_dtype=dtype).to(device)
    trained.attach(full.transformer)
    prompt_embeds, pooled, _ = embedder([PROMPTS[0]])
    full.adapter = trained
    full.load_lora_weights(str(saved / "lora"))
    try:
        meter.reset_peak()
        t0 = time.perf_counter()
        image = full(prompt_embeds=prompt_embeds.to(dtype), pooled_prompt_embeds=pooled.to(dtype), height=args.size,
                     width=args.size, num_inference_steps=args.steps, seed=0, subject_embeds=embeds,
                     task="fusion", output_type="np").images[0]
        meter.sync()
        return {"seconds": time.perf_counter() - t0, "peak_memory_gb": meter.peak_gb(),
                "image_shape": list(image.shape), "finite": bool(np.isfinite(image).all()),
                "lora_loaded": bool(getattr(full.transformer, "peft_config", None))}
    finally:
        full.unload_lora_weights()
        full.adapter = original


# --- pipeline and memory modes ------------------------------------------------------------------------------


def _generate(full, args, embeds, meter, device, identity: bool = True) -> tuple[np.ndarray, dict]:
    meter.reset_peak()
    meter.sync()
    t0 = time.perf_counter()
    kwargs = {"subject_embeds": embeds.to(device), "task": "fusion"} if identity else {}
    image = full(prompt=PROMPTS[0], height=args.size, width=args.size, num_inference_steps=args.memory_steps,
                 seed=0, output_type="np", **kwargs).images[0]
    meter.sync()
    return image, {"seconds": time.perf_counter() - t0, "peak_memory_gb": meter.peak_gb()}


def quantized_transformer(transformer, folder: Path, dtype: torch.dtype, backend: str, device: str):
    """The transformer saved to ``folder`` and loaded back with int8 weights through diffusers' ``backend``
    quantizer ("torchao" or "quanto"; the config of ``idglow generate --quantize int8``), quantized on
    ``device`` (on the GPU it takes seconds)."""
    from diffusers import FluxTransformer2DModel

    from idglow.quantization import transformer_quantization

    transformer.save_pretrained(str(folder))
    return FluxTransformer2DModel.from_pretrained(str(folder), quantization_config=transformer_quantization(
        "int8", backend), torch_dtype=dtype, device_map={"": device})


def quant_backend(choice: str) -> str:
    """"torchao" or "quanto": the one asked for, or with "auto" the first that imports."""
    from idglow.quantization import quantization_backend

    return quantization_backend(choice)


def section_pipeline(pipe, meter, args, text, embeds) -> dict:
    """Prompt text → image with text encoders at FLUX's dims, in each memory mode (peak memory, seconds), with
    the eager model even after the ``compile`` section compiled the transformer's blocks."""
    with torch.compiler.set_stance("force_eager"):
        return _memory_modes(pipe, meter, args, embeds)


def _memory_modes(pipe, meter, args, embeds) -> dict:
    device, dtype = args.device, pipe.transformer.dtype
    full = with_text_encoders(pipe, text_encoders(args.tiny, args.device, dtype))
    result: dict = {"steps": args.memory_steps,
                    "text_encoder_params": sum(p.numel() for m in (full.text_encoder, full.text_encoder_2)
                                               for p in m.parameters())}
    full.to(device)
    reference, result["gpu"] = _generate(full, args, embeds, meter, device)
    # two scales for the modes' differences: the same call again (run-to-run noise), and the image without
    # identity (what an offload mode that lost the identity hooks would differ by)
    again, _ = _generate(full, args, embeds, meter, device)
    plain, _ = _generate(full, args, embeds, meter, device, identity=False)
    result["gpu"]["max_diff_repeat"] = float(np.abs(again - reference).max())
    result["gpu"]["max_diff_without_identity"] = float(np.abs(plain - reference).max())
    full.to("cpu")
    meter.free()
    # before the offload modes: sequential offload leaves the weights it restores on the CPU
    result["quantized"] = quantized_mode(full, args, embeds, meter, reference)
    modes = {"model_cpu_offload": full.enable_model_cpu_offload,
             "sequential_cpu_offload": full.enable_sequential_cpu_offload}
    for mode, enable in modes.items():
        if mode == "sequential_cpu_offload" and not device.startswith("cuda"):
            # accelerate cannot offload layer by layer to the CPU when the CPU is also the execution device
            result[mode] = {"skipped": "needs an accelerator"}
            continue
        try:
            enable(device=device)
            image, result[mode] = _generate(full, args, embeds, meter, device)
            result[mode]["max_diff_vs_gpu"] = float(np.abs(image - reference).max())
        except Exception as err:  # one mode failing must not hide the others
            result[mode] = {"error": f"{type(err).__name__}: {err}"}
        finally:
            full.remove_all_hooks()
            full.to("cpu")
            meter.free()
    return result


def quantized_mode(full, args, embeds, meter, reference) -> dict:
    """int8 weight-only transformer + model CPU offload: the 24 GB-card configuration."""
    from idglow.pipeline import IdGlowPipeline

    try:
        backend = quant_backend(args.quant_backend)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            transformer = quantized_transformer(full.transformer, Path(tmp), full.transformer.dtype, backend,
                                                args.device)
            load_s = time.perf_counter() - t0
        components = {**full.components, "transformer": transformer}
        quant = IdGlowPipeline(**{k: v for k, v in components.items() if k in _PIPE_ARGS})
        quant.set_progress_bar_config(disable=True)
        quant.adapter.attach(transformer)
        quant.enable_model_cpu_offload(device=args.device)
        image, out = _generate(quant, args, embeds, meter, args.device)
        out.update(backend=backend, load_s=load_s, max_diff_vs_gpu=float(np.abs(image - reference).max()),
                   finite=bool(np.isfinite(image).all()),
                   transformer_gb=round(sum(_storage_bytes(p) for p in transformer.parameters()) / 2**30, 2))
        quant.remove_all_hooks()
        return out
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"}
    finally:
        meter.free()


_PIPE_ARGS = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer",
              "adapter")


def _storage_bytes(param: torch.Tensor) -> int:
    """Bytes a (possibly quantized) parameter holds: a tensor subclass reports its int8 data and scales."""
    inner = getattr(param, "__tensor_flatten__", None)
    if inner is not None:
        names, _ = param.__tensor_flatten__()
        return sum(_storage_bytes(getattr(param, n)) for n in names)
    return param.numel() * param.element_size()


def summary_lines(sections: dict) -> list[str]:
    """Table lines for the two sections."""
    lines = []
    trainer = sections.get("trainer", {})
    for kind in ("sft", "sft_resumed", "dpo"):
        if kind in trainer:
            t = trainer[kind]
            fb = t["forward_backward_s"]
            step = sum(fb[1:]) / max(1, len(fb) - 1) if len(fb) > 1 else (fb[0] if fb else math.nan)
            lines.append(f"trainer {kind}: {t['steps']} steps, forward+backward {step:.2f} s, peak "
                         f"{t['peak_memory_gb']} GB, losses {', '.join(f'{v:.4g}' for v in t['losses'])}, frozen "
                         f"{t['frozen_dtype']}, trainable {'/'.join(t['trainable_dtype'])}")
    if "reloaded" in trainer:
        lines.append(f"trainer reload adapter+LoRA and generate: {trainer['reloaded']['seconds']:.2f} s")
    pipeline = sections.get("pipeline", {})
    for mode in ("gpu", "model_cpu_offload", "sequential_cpu_offload", "quantized"):
        if mode in pipeline:
            m = pipeline[mode]
            if "seconds" in m:
                extra = f", max diff vs gpu {m['max_diff_vs_gpu']:.3g}" if "max_diff_vs_gpu" in m else ""
                lines.append(f"pipeline {mode}: {m['seconds']:.2f} s/img ({pipeline['steps']} steps), peak "
                             f"{m['peak_memory_gb']} GB{extra}")
            else:
                lines.append(f"pipeline {mode}: {m.get('error') or m.get('skipped')}")
    return lines
