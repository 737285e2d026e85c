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
from torch.utils.data import DataLoader, Dataset

from idglow.adapter import identity_checkpoint
from idglow.losses import (
    add_flow_noise,
    dpo_loss,
    flow_target,
    orient_pairs,
    region_errors,
    sft_loss,
)
from idglow.schedule import IdentityWindow, sigma_window, slot_windows, window_for_task
from idglow.training.buckets import BucketBatchSampler
from idglow.training.caching import batch_encoder_prompts
from idglow.training.config import DPOConfig, SFTConfig, TrainingConfig
from idglow.training.data import boxes_to_masks, collate_group_samples, dpo_region_masks
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
#: What a run logged, written by the main process into output_dir: processes, steps, metrics averaged over
#: every process, and the data-set indices each process trained on at each step.
LOG_FILE = "train_log.json"
# the dtype the frozen modules (transformer, VAE, text encoders) are kept in under each mixed precision
FROZEN_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainOutput:
    """What a training run returns: its last step, the logged metrics and the output folder."""

    global_step: int
    log_history: list[dict[str, float]] = field(default_factory=list)
    output_dir: str | None = None
    num_processes: int = 1
    shards: list[list[list[int]]] = field(default_factory=list)


class _IndexedDataset(Dataset):
    """``dataset[i]`` with its index, so that a batch knows which samples it holds."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return index, self.dataset[index]


class _IndexedCollate:
    """``collate_fn`` of the samples, plus ``sample_index``: their indices in the data set."""

    def __init__(self, collate_fn):
        self.collate_fn = collate_fn

    def __call__(self, items):
        batch = self.collate_fn([sample for _, sample in items])
        batch["sample_index"] = [int(index) for index, _ in items]
        return batch


def _trains_on_cpu() -> bool:
    """Whether accelerate will put the run on the CPU, read without creating its process-wide state: a
    ``PartialState()`` made before the ``Accelerator`` fixes a launched run as a single, non-distributed
    process (every rank then trains alone on all the data)."""
    from accelerate.utils import parse_flag_from_env

    return parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()


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
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed

        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        if config.mixed_precision == "fp16" and _trains_on_cpu():
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
        self.shard_history: list[list[list[int]]] = []

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
        self.dataloader = DataLoader(_IndexedDataset(train_dataset), batch_sampler=self.sampler,
                                     collate_fn=_IndexedCollate(collate_fn or collate_group_samples),
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
        """The seed of (step, micro-step), the same on every process: a resumed run draws what an uninterrupted
        one would. Each sample's draws come from ``sample_generators``."""
        seed = (self.config.seed * 1_000_003 + self.global_step * 1009 + micro_step * 17) % (2**63 - 1)
        return torch.Generator().manual_seed(seed)

    @staticmethod
    def sample_generators(batch: dict[str, Any], generator: torch.Generator) -> list[torch.Generator]:
        """One generator per sample, from the step's ``generator`` and the sample's index in the data set: a
        sample's noise and σ do not depend on its batch-mates or on how a step is split across processes, so
        two processes with one sample each draw what one process with both draws."""
        base = int(generator.initial_seed())
        keys = batch.get("sample_index") or range(batch["id_embeds"].shape[0])
        return [torch.Generator().manual_seed((base * 1_000_003 + 7919 * (int(k) + 1)) % (2**63 - 1)) for k in keys]

    def sample_noise(self, shape: torch.Size, generators: list[torch.Generator]) -> torch.Tensor:
        """Gaussian noise of ``shape`` (B, ...), sample b from ``generators[b]``."""
        return torch.stack([torch.randn(shape[1:], generator=g) for g in generators]).to(self.device)

    def sample_sigmas(self, batch_size: int, generator: torch.Generator | list[torch.Generator],
                      tasks: list[str] | None = None, window_fraction: float = 0.0) -> torch.Tensor:
        """σ ∈ (0, 1) per sample: the configured density (logit-normal by default), shifted; with
        ``window_fraction`` > 0 that fraction of age samples is drawn uniformly inside the age window.
        ``generator``: one for the batch, or one per sample (``sample_generators``)."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        cfg = self.config
        gens = list(generator) if isinstance(generator, (list, tuple)) else [generator]
        size = 1 if isinstance(generator, (list, tuple)) else batch_size

        def density(g: torch.Generator) -> torch.Tensor:
            return compute_density_for_timestep_sampling(cfg.weighting_scheme, size, logit_mean=cfg.logit_mean,
                                                         logit_std=cfg.logit_std, mode_scale=1.29, generator=g)

        def draw(fn) -> torch.Tensor:
            return torch.cat([fn(g) for g in gens])

        u = draw(density)
        sigmas = cfg.sigma_shift * u / (1 + (cfg.sigma_shift - 1) * u)
        if tasks is not None and window_fraction > 0:
            pick = draw(lambda g: torch.rand(size, generator=g))
            inside = draw(lambda g: torch.rand(size, generator=g))
            for i, task in enumerate(tasks):
                win = self.window_for(task)
                if task == "age" and pick[i] < window_fraction:
                    sigmas[i] = win.sigma_lo + inside[i] * (win.sigma_hi - win.sigma_lo)
        return sigmas.clamp(1e-4, 1.0).to(self.device)

    def task_window(self, task: str) -> IdentityWindow:
        """The window of the people a task acts on, in the configured coordinate (``age_window`` overrides
        the age preset)."""
        age_window = getattr(self.config, "age_window", None)
        if task == "age" and age_window is not None:
            return IdentityWindow(*age_window)
        return window_for_task(task)

    def to_sigma(self, window: IdentityWindow) -> IdentityWindow:
        """``window`` read in ``config.window_coordinate`` as a σ window (``idglow.schedule.sigma_window``)."""
        return sigma_window(window, self.config.window_coordinate, self.config.window_shift)

    def window_for(self, task: str) -> IdentityWindow:
        """The task's window as a σ window (where window sampling draws the age task's σ)."""
        return self.to_sigma(self.task_window(task))

    def slot_gates(self, batch: dict[str, Any], sigmas: torch.Tensor, num_slots: int) -> torch.Tensor:
        """(B, N) identity gate of each person of each sample at its σ, from the per-person windows inference
        uses (``idglow.schedule.slot_windows``): in the age task a person with a target age is gated by the
        age window, one without stays on at every step. Samples without ``target_ages`` gate everyone."""
        tasks = list(batch["task"])
        all_ages = batch.get("target_ages") or [None] * len(tasks)
        rows = []
        for task, ages, sigma in zip(tasks, all_ages, sigmas.detach().cpu()):
            ages = list(ages or [])[:num_slots]
            ages += [None] * (num_slots - len(ages))
            override = self.task_window(task) if task == "age" else None
            windows = slot_windows(task, ages, override)
            rows.append([self.to_sigma(w).gate(float(sigma)) for w in windows])
        return torch.tensor(rows, dtype=torch.float32, device=self.device).reshape(len(tasks), num_slots)

    @torch.no_grad()
    def latents_of(self, batch: dict[str, Any], suffix: str = "",
                   generators: list[torch.Generator] | None = None) -> torch.Tensor:
        """The batch's latents, or its pixels encoded by the VAE (one draw of each latent distribution, sample
        b from ``generators[b]`` when given)."""
        if f"latents{suffix}" in batch:
            return batch[f"latents{suffix}"].to(self.device, torch.float32)
        if self.vae is None:
            raise ValueError(f"the batch has pixel_values{suffix} but the trainer has no VAE to encode them")
        pixels = batch[f"pixel_values{suffix}"].to(self.device, self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.sample(generator=generators)
        cfg = self.vae.config
        return ((latents - (cfg.shift_factor or 0.0)) * cfg.scaling_factor).float()

    @torch.no_grad()
    def prompts_of(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if "prompt_embeds" in batch:
            return (batch["prompt_embeds"].to(self.device, torch.float32),
                    batch["pooled_prompt_embeds"].to(self.device, torch.float32), None)
        if self.encode_prompt is None:
            raise ValueError("the batch has prompt text but the trainer has no encode_prompt to embed it")
        embeds, pooled, txt_ids = self.encode_prompt(batch_encoder_prompts(batch))  # as inference encodes them
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

    def end_processes(self) -> None:
        """After a multi-process run, once every process got here: leave the process group. A rank that exits
        with the group still up can lose it while another rank is still talking to it (the rank then aborts with
        "terminate called without an active exception")."""
        if self.accelerator.num_processes > 1:
            from accelerate import PartialState

            self.accelerator.wait_for_everyone()
            PartialState().destroy_process_group()

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
                record = self.step_record(loss, logs, batch)
                loss_value = record["loss"]
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"loss became {loss_value} at step {self.global_step}")
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
        out = TrainOutput(self.global_step, self.log_history, str(self.output_dir), acc.num_processes,
                          self.shard_history)
        self.write_log(out)
        return out

    def step_record(self, loss: torch.Tensor, logs: dict[str, float], batch: dict[str, Any]) -> dict[str, float]:
        """The step's metrics over every process (``gather_for_metrics``): each the mean of the processes
        that report it, not this process's last batch alone. Records which samples each process trained on."""
        local = {"loss": float(loss.detach().float()), **{k: float(v) for k, v in logs.items()},
                 "_samples": list(batch.get("sample_index") or [])}
        gathered = self.accelerator.gather_for_metrics([local], use_gather_object=True)
        self.shard_history.append([g.pop("_samples") for g in gathered])
        names = list(dict.fromkeys(k for g in gathered for k in g))
        means = {k: sum(g[k] for g in gathered if k in g) / sum(k in g for g in gathered) for k in names}
        return {"step": self.global_step, **means, "lr": self.lr_scheduler.get_last_lr()[0]}

    def write_log(self, out: TrainOutput) -> None:
        """``output_dir/train_log.json`` (main process only)."""
        if not self.accelerator.is_main_process:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / LOG_FILE).write_text(json.dumps({
            "num_processes": out.num_processes, "global_step": out.global_step, "log_history": out.log_history,
            "shards": out.shards}, indent=1))


class SFTTrainer(BaseTrainer):
    """Supervised fine-tuning: flow-matching loss plus the face-region term weighted by the identity-constraint
    decay w(σ) (``identity_decay``); identity injection and each person's face term gated by that person's
    identity window, as at inference (in the age task, only the people with a target age are windowed)."""

    config_class = SFTConfig

    def compute_loss(self, batch, generator):
        cfg: SFTConfig = self.config
        gens = self.sample_generators(batch, generator)
        latents = self.latents_of(batch, generators=gens)
        embeds, pooled, txt_ids = self.prompts_of(batch)
        b, _, h, w = latents.shape
        tasks = list(batch["task"])
        noise = self.sample_noise(latents.shape, gens)
        sigmas = self.sample_sigmas(b, gens, tasks, cfg.window_sampling_fraction)
        n = batch["id_embeds"].shape[1]
        gates = self.slot_gates(batch, sigmas, n)
        real = batch["id_mask"].to(self.device) > 0
        scales = batch["id_mask"].to(self.device) * gates
        if cfg.identity_dropout > 0:
            keep = (torch.cat([torch.rand(1, generator=g) for g in gens]) >= cfg.identity_dropout).float()
            keep = keep.to(self.device)
            scales = scales * keep[:, None]
        noisy = add_flow_noise(latents, noise, sigmas)
        pred = self.model(pack_latents(noisy), sigmas, embeds, pooled, latent_image_ids(h, w, self.device),
                          batch["id_embeds"].to(self.device), scales, txt_ids)
        # each person's face counts where that person's identity is on
        on = ((gates > 0) & real).float()
        face = (pack_masks(boxes_to_masks(batch["face_boxes"], n, h, w)).to(self.device) * on[..., None]).amax(dim=1)
        out = sft_loss(pred, pack_latents(flow_target(latents, noise)), sigmas, face.unsqueeze(-1),
                       face_lambda=cfg.face_lambda, w_clean=cfg.w_clean, w_noisy=cfg.w_noisy,
                       face_gate=(gates * real).amax(dim=1), decay=cfg.identity_decay)
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
        gens = self.sample_generators(batch, generator)
        lat0, lat1 = self.latents_of(batch, "_0", gens), self.latents_of(batch, "_1", gens)
        embeds, pooled, txt_ids = self.prompts_of(batch)
        b, _, h, w = lat0.shape
        noise = self.sample_noise(lat0.shape, gens)
        sigmas = self.sample_sigmas(b, gens)
        scales = batch["id_mask"].to(self.device) * self.slot_gates(batch, sigmas, batch["id_embeds"].shape[1])
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
        alpha = torch.tensor(cfg.alpha_vector(), device=self.device)[None] * labelled
        out = dpo_loss(cfg.loss_type)(pw, pl, rw, rl, alpha, batch["strength"].to(self.device), cfg.beta, cfg.gamma)
        logs = {"reward_accuracy": float(out.reward_accuracy)}
        logs.update(out.named())
        return out.loss, logs
