"""Trainers on accelerate. ``BaseTrainer`` owns the loop (mixed precision, gradient accumulation, clipping,
checkpoints, resume, trackers, seeding); ``SFTTrainer`` and ``DPOTrainer`` implement ``compute_loss`` only.

Launch on several GPUs with ``accelerate launch -m idglow train sft --config cfg.yaml``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from idglow.adapter import identity_checkpoint
from idglow.losses import (
    DPO_DIMENSIONS,
    add_flow_noise,
    flow_target,
    group_dpo_loss,
    orient_pairs,
    region_errors,
    sft_loss,
)
from idglow.schedule import IdentityWindow, window_for_task
from idglow.training.buckets import BucketBatchSampler
from idglow.training.config import DPOConfig, SFTConfig, TrainingConfig
from idglow.training.data import NUM_DIMENSIONS, boxes_to_masks, collate_group_samples, dpo_region_masks
from idglow.training.modeling import (
    IdGlowDenoiser,
    attention_backend,
    latent_image_ids,
    pack_latents,
    pack_masks,
)

logger = logging.getLogger(__name__)

TRAINABLE_FILE = "trainable.safetensors"
STATE_FILE = "trainer_state.json"
# the dtype the frozen modules (transformer, VAE, text encoders) are kept in under each mixed precision
FROZEN_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainOutput:
    """What a training run returns: its last step, the logged metrics and the output folder."""

    global_step: int
    log_history: list[dict[str, float]] = field(default_factory=list)
    output_dir: str | None = None


def _checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


class BaseTrainer:
    """The training loop. Subclasses implement ``compute_loss(batch, generator) -> (loss, logs)``.

    Args:
        config: a TrainingConfig (SFTConfig / DPOConfig).
        model: the IdGlowDenoiser (transformer + adapter). The transformer is frozen; the adapter and, with
            ``config.lora_rank`` > 0, a peft LoRA on the transformer are trained.
        train_dataset: a map-style dataset of sample dicts (see ``idglow.training.data``) with
            ``bucket_ids`` (one aspect bucket per sample; all 0 when absent).
        vae / encode_prompt: needed only when samples carry pixels / prompt text instead of latents /
            prompt embeddings; ``encode_prompt(list[str]) -> (prompt_embeds, pooled, txt_ids)``.

    Under ``mixed_precision`` bf16 / fp16 the frozen transformer and the VAE are cast to that dtype
    (``frozen_dtype``) while every trainable parameter (adapter, LoRA) is kept in float32 and the step runs
    under autocast. The step runs inside ``config.attention_backend``'s kernel selection.
    """

    config_class = TrainingConfig

    def __init__(self, config: TrainingConfig, model: IdGlowDenoiser, train_dataset, *, collate_fn=None,
                 vae=None, encode_prompt=None):
        from accelerate import Accelerator, PartialState
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed

        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        if config.mixed_precision == "fp16" and PartialState().device.type == "cpu":
            # accelerate would accept it and silently train in float32
            raise ValueError("mixed_precision='fp16' needs a GPU; on CPU use mixed_precision='bf16' or 'no'")
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=None if config.report_to == "none" else config.report_to,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / "logs")),
            # identity injection is skipped when a whole batch is outside its window
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        set_seed(config.seed)
        self.vae = vae
        self.encode_prompt = encode_prompt
        self.global_step = 0
        self.log_history: list[dict[str, float]] = []

        self.frozen_dtype = FROZEN_DTYPES[config.mixed_precision]
        self._set_trainable(model)
        self.setup_model(model)
        model.train()
        if vae is not None:
            vae.requires_grad_(False).eval().to(self.accelerator.device, self.frozen_dtype)
        if config.cache_latents:
            train_dataset = self.cache_latents(train_dataset)
        self.trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                      eps=config.adam_epsilon, weight_decay=config.weight_decay)
        from diffusers.optimization import get_scheduler

        scheduler = get_scheduler(config.lr_scheduler, optimizer,
                                  num_warmup_steps=config.lr_warmup_steps * self.accelerator.num_processes,
                                  num_training_steps=config.max_steps * self.accelerator.num_processes)
        self.sampler = BucketBatchSampler(
            getattr(train_dataset, "bucket_ids", None) or [0] * len(train_dataset), config.train_batch_size,
            seed=config.seed, num_replicas=self.accelerator.num_processes, rank=self.accelerator.process_index,
        )
        self.dataloader = DataLoader(train_dataset, batch_sampler=self.sampler,
                                     collate_fn=collate_fn or collate_group_samples,
                                     num_workers=config.dataloader_num_workers)
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.accelerator.register_save_state_pre_hook(self._save_hook)
        self.accelerator.register_load_state_pre_hook(self._load_hook)

    def _set_trainable(self, model: IdGlowDenoiser) -> None:
        """Freeze the transformer in ``frozen_dtype``; add the LoRA; adapter and LoRA trainable in float32."""
        cfg = self.config
        model.transformer.requires_grad_(False)
        if model.transformer.dtype != self.frozen_dtype:  # load it in this dtype to skip the float32 copy
            logger.info("casting the frozen transformer to %s", self.frozen_dtype)
            model.transformer.to(self.frozen_dtype)
        if cfg.lora_rank > 0:
            model.add_lora(cfg.lora_rank, cfg.lora_alpha, list(cfg.lora_target_modules))
        model.adapter.requires_grad_(True)
        for param in model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
        if cfg.gradient_checkpointing:
            # recomputation must see the forward's identity injection (autograd may run it in another thread)
            model.transformer.enable_gradient_checkpointing(gradient_checkpointing_func=identity_checkpoint)

    def cache_latents(self, dataset):
        """``dataset`` with its images encoded by the VAE once; the VAE then leaves the accelerator."""
        from idglow.training.caching import CachedLatentsDataset

        if self.vae is None:
            logger.warning("cache_latents is set but the trainer has no VAE; the data set is used as it is")
            return dataset
        cached = CachedLatentsDataset(dataset, lambda pixels: self.latents_of({"pixel_values": pixels}))
        self.vae.to("cpu")
        return cached

    # --- hooks for subclasses ---------------------------------------------------------------------------

    def setup_model(self, model: IdGlowDenoiser) -> None:
        """Called once the trainable parameters are set, before accelerate wraps the model."""

    def compute_loss(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def forward_backward(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """One micro-step's loss and gradients: the forward under autocast, both passes inside the configured
        attention kernels."""
        with attention_backend(self.config.attention_backend):
            with self.accelerator.autocast():
                loss, logs = self.compute_loss(batch, generator)
            self.accelerator.backward(loss)
        return loss, logs

    # --- shared pieces ----------------------------------------------------------------------------------

    @property
    def unwrapped(self) -> IdGlowDenoiser:
        return self.accelerator.unwrap_model(self.model)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def step_generator(self, micro_step: int) -> torch.Generator:
        """Noise and σ for (step, micro-step, process) are a function of the seed: a resumed run draws what an
        uninterrupted one would."""
        seed = (self.config.seed * 1_000_003 + self.global_step * 1009 + micro_step * 17
                + self.accelerator.process_index) % (2**63 - 1)
        return torch.Generator().manual_seed(seed)

    def sample_sigmas(self, batch_size: int, generator: torch.Generator, tasks: list[str] | None = None,
                      window_fraction: float = 0.0) -> torch.Tensor:
        """σ ∈ (0, 1) per sample: the configured density (logit-normal by default), shifted; with
        ``window_fraction`` > 0 that fraction of age samples is drawn uniformly inside the age window."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        cfg = self.config
        u = compute_density_for_timestep_sampling(cfg.weighting_scheme, batch_size, logit_mean=cfg.logit_mean,
                                                  logit_std=cfg.logit_std, mode_scale=1.29, generator=generator)
        sigmas = cfg.sigma_shift * u / (1 + (cfg.sigma_shift - 1) * u)
        if tasks is not None and window_fraction > 0:
            pick = torch.rand(batch_size, generator=generator)
            inside = torch.rand(batch_size, generator=generator)
            for i, task in enumerate(tasks):
                win = self.window_for(task)
                if task == "age" and pick[i] < window_fraction:
                    sigmas[i] = win.sigma_lo + inside[i] * (win.sigma_hi - win.sigma_lo)
        return sigmas.clamp(1e-4, 1.0).to(self.device)

    def window_for(self, task: str) -> IdentityWindow:
        age_window = getattr(self.config, "age_window", None)
        if task == "age" and age_window is not None:
            return IdentityWindow(*age_window)
        return window_for_task(task)

    def gates(self, tasks: list[str], sigmas: torch.Tensor) -> torch.Tensor:
        values = [self.window_for(t).gate(float(s)) for t, s in zip(tasks, sigmas.detach().cpu())]
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def latents_of(self, batch: dict[str, Any], suffix: str = "") -> torch.Tensor:
        if f"latents{suffix}" in batch:
            return batch[f"latents{suffix}"].to(self.device, torch.float32)
        if self.vae is None:
            raise ValueError(f"the batch has pixel_values{suffix} but the trainer has no VAE to encode them")
        pixels = batch[f"pixel_values{suffix}"].to(self.device, self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.sample()
        cfg = self.vae.config
        return ((latents - (cfg.shift_factor or 0.0)) * cfg.scaling_factor).float()

    @torch.no_grad()
    def prompts_of(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if "prompt_embeds" in batch:
            return (batch["prompt_embeds"].to(self.device, torch.float32),
                    batch["pooled_prompt_embeds"].to(self.device, torch.float32), None)
        if self.encode_prompt is None:
            raise ValueError("the batch has prompt text but the trainer has no encode_prompt to embed it")
        embeds, pooled, txt_ids = self.encode_prompt(list(batch["prompt"]))
        return embeds.to(self.device, torch.float32), pooled.to(self.device, torch.float32), txt_ids

    # --- checkpoints --------------------------------------------------------------------------------------

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        params = dict(self.unwrapped.named_parameters())
        return {n: params[n].detach().cpu().contiguous() for n in self.trainable_names}

    def _save_hook(self, models, weights, output_dir) -> None:
        from safetensors.torch import save_file

        if self.accelerator.is_main_process:
            save_file(self.trainable_state_dict(), str(Path(output_dir) / TRAINABLE_FILE))
            (Path(output_dir) / STATE_FILE).write_text(json.dumps({"global_step": self.global_step}))
        while weights:  # the frozen transformer is not written into every checkpoint
            weights.pop()

    def _load_hook(self, models, input_dir) -> None:
        from safetensors.torch import load_file

        state = load_file(str(Path(input_dir) / TRAINABLE_FILE))
        while models:
            model = self.accelerator.unwrap_model(models.pop())
            missing = set(self.trainable_names) - set(state)
            if missing:
                raise ValueError(f"checkpoint {input_dir} lacks {len(missing)} trainable tensors, e.g. "
                                 f"{sorted(missing)[0]}; was it made with another adapter/LoRA config?")
            model.load_state_dict(state, strict=False)

    def save_checkpoint(self) -> Path:
        path = self.output_dir / f"checkpoint-{self.global_step}"
        limit = self.config.checkpoints_total_limit
        if self.accelerator.is_main_process and limit is not None:
            existing = _checkpoints(self.output_dir)
            for old in existing[: max(0, len(existing) - limit + 1)]:
                logger.info("removing old checkpoint %s (checkpoints_total_limit=%d)", old, limit)
                shutil.rmtree(old)
        self.accelerator.save_state(str(path))
        self.accelerator.wait_for_everyone()
        return path

    def resolve_checkpoint(self, value: str) -> Path | None:
        if value == "latest":
            found = _checkpoints(self.output_dir)
            if not found:
                logger.warning("resume_from_checkpoint='latest' but %s has no checkpoint; starting fresh",
                               self.output_dir)
                return None
            return found[-1]
        path = Path(value)
        if not (path / STATE_FILE).is_file():
            raise ValueError(f"resume_from_checkpoint={value!r} is not a checkpoint folder (no {STATE_FILE})")
        return path

    def save_model(self, output_dir: str | Path | None = None) -> Path:
        """Write the adapter (``adapter/``) and, when trained, the LoRA (``lora/``)."""
        out = Path(output_dir or self.output_dir)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            model = self.unwrapped
            model.adapter.save_pretrained(str(out / "adapter"))
            if model.has_lora:
                from diffusers import FluxPipeline
                from peft.utils import get_peft_model_state_dict

                # the peft config (lora_alpha) travels in the file: without it a loader assumes alpha = rank
                FluxPipeline.save_lora_weights(
                    str(out / "lora"), transformer_lora_layers=get_peft_model_state_dict(model.transformer),
                    transformer_lora_adapter_metadata=model.transformer.peft_config["default"].to_dict())
        return out

    # --- the loop -----------------------------------------------------------------------------------------

    def train(self) -> TrainOutput:
        cfg, acc = self.config, self.accelerator
        if cfg.resume_from_checkpoint:
            path = self.resolve_checkpoint(cfg.resume_from_checkpoint)
            if path is not None:
                acc.load_state(str(path))
                self.global_step = json.loads((path / STATE_FILE).read_text())["global_step"]
                logger.info("resumed from %s at step %d", path, self.global_step)
        if acc.is_main_process and cfg.report_to != "none":
            acc.init_trackers(cfg.tracker_project_name,
                              config={k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))})
        micro_per_epoch = len(self.sampler)
        done_micro = self.global_step * cfg.gradient_accumulation_steps
        epoch = done_micro // micro_per_epoch
        self.sampler.skip_batches = done_micro % micro_per_epoch
        micro = 0
        while self.global_step < cfg.max_steps:
            self.sampler.set_epoch(epoch)
            for batch in self.dataloader:
                with acc.accumulate(self.model):
                    generator = self.step_generator(micro % cfg.gradient_accumulation_steps)
                    loss, logs = self.forward_backward(batch, generator)
                    if acc.sync_gradients and cfg.max_grad_norm > 0:
                        acc.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                            cfg.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                micro += 1
                if not acc.sync_gradients:
                    continue
                self.global_step += 1
                loss_value = acc.gather(loss.detach().float().reshape(1)).mean().item()
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"loss became {loss_value} at step {self.global_step}")
                record = {"step": self.global_step, "loss": loss_value,
                          "lr": self.lr_scheduler.get_last_lr()[0], **logs}
                self.log_history.append(record)
                if self.global_step % cfg.logging_steps == 0 or self.global_step == cfg.max_steps:
                    logger.info("step %d: loss %.5f", self.global_step, loss_value)
                    if cfg.report_to != "none":
                        acc.log({k: v for k, v in record.items() if k != "step"}, step=self.global_step)
                if cfg.checkpointing_steps and self.global_step % cfg.checkpointing_steps == 0:
                    self.save_checkpoint()
                if self.global_step >= cfg.max_steps:
                    break
            epoch += 1
        for tracker in acc.trackers:  # not end_training(): it would tear down the process group
            tracker.finish()
        acc.wait_for_everyone()
        return TrainOutput(self.global_step, self.log_history, str(self.output_dir))


class SFTTrainer(BaseTrainer):
    """Supervised fine-tuning: flow-matching loss plus the face-region term weighted by the linear-decay
    w(σ); identity injection (and, for the age task, the face term) gated by each task's identity window."""

    config_class = SFTConfig

    def compute_loss(self, batch, generator):
        cfg: SFTConfig = self.config
        latents = self.latents_of(batch)
        embeds, pooled, txt_ids = self.prompts_of(batch)
        b, _, h, w = latents.shape
        tasks = list(batch["task"])
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        sigmas = self.sample_sigmas(b, generator, tasks, cfg.window_sampling_fraction)
        gates = self.gates(tasks, sigmas)
        scales = batch["id_mask"].to(self.device) * gates[:, None]
        if cfg.identity_dropout > 0:
            keep = (torch.rand(b, generator=generator) >= cfg.identity_dropout).float().to(self.device)
            scales = scales * keep[:, None]
        noisy = add_flow_noise(latents, noise, sigmas)
        pred = self.model(pack_latents(noisy), sigmas, embeds, pooled, latent_image_ids(h, w, self.device),
                          batch["id_embeds"].to(self.device), scales, txt_ids)
        n = batch["id_embeds"].shape[1]
        face = pack_masks(boxes_to_masks(batch["face_boxes"], n, h, w)).amax(dim=1).to(self.device)
        out = sft_loss(pred, pack_latents(flow_target(latents, noise)), sigmas, face.unsqueeze(-1),
                       face_lambda=cfg.face_lambda, w_clean=cfg.w_clean, w_noisy=cfg.w_noisy, face_gate=gates)
        return out.loss, {"loss_base": out.base.mean().item(), "loss_face": out.face.mean().item()}


class DPOTrainer(BaseTrainer):
    """Group-level weighted-margin Flow-DPO. The reference is the starting (SFT) model: a frozen copy of the
    adapter, with the LoRA being trained disabled. Winner and loser go through one batched forward."""

    config_class = DPOConfig

    def setup_model(self, model: IdGlowDenoiser) -> None:
        model.make_reference()

    def region_masks(self, boxes_0, boxes_1, n_slots: int, h: int, w: int) -> torch.Tensor:
        """(2B, D, L): each dimension's region in image 0 of every pair, then in image 1 (``dpo_region_masks``)."""
        masks_0, masks_1 = dpo_region_masks(boxes_0, boxes_1, n_slots, h, w)
        return torch.cat([pack_masks(masks_0), pack_masks(masks_1)]).to(self.device)

    def compute_loss(self, batch, generator):
        cfg: DPOConfig = self.config
        lat0, lat1 = self.latents_of(batch, "_0"), self.latents_of(batch, "_1")
        embeds, pooled, txt_ids = self.prompts_of(batch)
        b, _, h, w = lat0.shape
        tasks = list(batch["task"])
        noise = torch.randn(lat0.shape, generator=generator).to(self.device)
        sigmas = self.sample_sigmas(b, generator)
        scales = batch["id_mask"].to(self.device) * self.gates(tasks, sigmas)[:, None]
        two = lambda t: torch.cat([t, t]) if t is not None else None  # noqa: E731
        latents = torch.cat([lat0, lat1])
        noise2, sigmas2 = two(noise), two(sigmas)
        args = (pack_latents(add_flow_noise(latents, noise2, sigmas2)), sigmas2, two(embeds), two(pooled),
                latent_image_ids(h, w, self.device), two(batch["id_embeds"].to(self.device)), two(scales), txt_ids)
        pred = self.model(*args)
        with torch.no_grad():
            ref = self.unwrapped(*args, reference=True)
        target = pack_latents(flow_target(latents, noise2))
        n = batch["id_embeds"].shape[1]
        masks = self.region_masks(batch["face_boxes_0"], batch["face_boxes_1"], n, h, w)
        err_pol = region_errors(pred, target, masks)
        err_ref = region_errors(ref.float(), target, masks)
        preference = batch["preference"].to(self.device)
        pw, pl, labelled = orient_pairs(err_pol[:b], err_pol[b:], preference)
        rw, rl, _ = orient_pairs(err_ref[:b], err_ref[b:], preference)
        alpha = torch.tensor(cfg.alpha_vector(NUM_DIMENSIONS - 3), device=self.device)[None] * labelled
        out = group_dpo_loss(pw, pl, rw, rl, alpha, batch["strength"].to(self.device), cfg.beta, cfg.gamma)
        logs = {"reward_accuracy": float(out.reward_accuracy)}
        logs.update(out.named(DPO_DIMENSIONS))
        return out.loss, logs
