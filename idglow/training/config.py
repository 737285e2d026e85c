"""Training configurations: one dataclass per algorithm, validated in ``__post_init__``, loadable from YAML
with ``key=value`` overrides (the same dataclasses feed the CLI and the tests)."""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from idglow.errors import InputError
from idglow.losses import DEFAULT_DPO_LOSS
from idglow.schedule import FLUX_1024_SHIFT, IDENTITY_DECAYS, WINDOW_COORDINATES

logger = logging.getLogger(__name__)

# scaled_dot_product_attention kernels a training step may use (``torch.nn.attention.SDPBackend`` names). cuDNN's
# fused attention is left out by default: on Hopper (torch 2.11) its backward in FLUX hits an illegal memory access
# and bf16 losses turn NaN.
ATTENTION_BACKENDS: dict[str, tuple[str, ...] | None] = {
    "no_cudnn": ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
    "flash": ("FLASH_ATTENTION",),
    "efficient": ("EFFICIENT_ATTENTION",),
    "math": ("MATH",),
    "auto": None,  # torch's own choice, cuDNN included
}


@dataclass
class TrainingConfig:
    """Options shared by every trainer."""

    output_dir: str = field(default="runs/idglow", metadata={"help": "Checkpoints, logs and the final adapter."})
    model: str = field(default="tiny", metadata={
        "help": "A local FLUX folder in diffusers format, 'tiny' (random toy FLUX, for tests) or 'synthetic' "
                "(the synthetic identity world's latent model)."})
    adapter: str | None = field(default=None, metadata={"help": "Adapter folder to start from (SFT output for DPO)."})
    lora: str | None = field(default=None, metadata={"help": "LoRA folder to start from (SFT output for DPO)."})
    train_data: str | None = field(default=None, metadata={
        "help": "SFT: a folder made by `idglow data build-sft`. DPO: an export Parquet file or a database URL."})
    seed: int = field(default=0, metadata={"help": "Seeds data order, noise and σ sampling."})
    max_steps: int = field(default=1000, metadata={"help": "Optimizer steps to run."})
    train_batch_size: int = field(default=1, metadata={"help": "Samples (SFT) or pairs (DPO) per device per step."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate."})
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    lr_scheduler: str = field(default="constant", metadata={"help": "Any diffusers.optimization scheduler name."})
    lr_warmup_steps: int = 0
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (0 = off)."})
    mixed_precision: Literal["no", "fp16", "bf16"] = field(default="no", metadata={"help": "accelerate mixed precision."})
    checkpointing_steps: int = field(default=500, metadata={"help": "Save a checkpoint every N steps (0 = never)."})
    checkpoints_total_limit: int | None = field(default=None, metadata={"help": "Keep at most this many checkpoints."})
    resume_from_checkpoint: str | None = field(default=None, metadata={
        "help": "A checkpoint folder, or 'latest' for the newest one in output_dir."})
    report_to: Literal["tensorboard", "none"] = "tensorboard"
    logging_steps: int = field(default=10, metadata={"help": "Log to the tracker every N steps."})
    lora_rank: int = field(default=0, metadata={"help": "Rank of a peft LoRA on the transformer (0 = no LoRA)."})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default: the rank)."})
    lora_target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    resolution: int = field(default=1024, metadata={"help": "Base side of the aspect-ratio buckets (pixels)."})
    guidance_scale: float = field(default=3.5, metadata={"help": "Distilled guidance input of FLUX-dev models."})
    weighting_scheme: Literal["logit_normal", "uniform", "mode"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    sigma_shift: float = field(default=1.0, metadata={"help": "σ ← shift·σ / (1 + (shift − 1)·σ) after sampling."})
    window_coordinate: Literal["sigma", "one_minus_sigma", "step_fraction"] = field(default="sigma", metadata={
        "help": "What the identity window's bounds measure, as at inference (`--window-coordinate`): sigma "
                "(noise level), one_minus_sigma (flow time t = 1 − σ) or step_fraction (fraction of the "
                "inference steps done, on a schedule shifted by window_shift)."})
    window_shift: float = field(default=FLUX_1024_SHIFT, metadata={
        "help": "window_coordinate=step_fraction: the shift of the inference schedule the fraction refers to "
                "(default exp(1.15), FLUX.1-dev at 1024²)."})
    max_sequence_length: int = 512
    dataloader_num_workers: int = 0
    gradient_checkpointing: bool = False
    attention_backend: Literal["no_cudnn", "flash", "efficient", "math", "auto"] = field(default="no_cudnn", metadata={
        "help": "Attention kernels of the training step: 'no_cudnn' (flash, memory-efficient or math; cuDNN's "
                "fused attention crashes in FLUX's backward on Hopper), one of them alone, or 'auto' (torch's "
                "choice)."})
    cache_prompt_embeds: bool = field(default=True, metadata={
        "help": "Embed each distinct prompt once (all of the data set's prompts before the first step) and keep "
                "the text encoders off the accelerator between encodings; false keeps them on it and encodes "
                "every batch."})
    cache_latents: bool = field(default=False, metadata={
        "help": "Encode every image with the VAE once before the first step and train on the stored latents "
                "(one draw of each latent distribution, kept for the run); the VAE then leaves the accelerator."})
    tracker_project_name: str = "idglow"

    def __post_init__(self) -> None:
        positive = ("max_steps", "train_batch_size", "gradient_accumulation_steps", "logging_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be > 0")
        if self.checkpointing_steps < 0:
            raise ValueError(f"checkpointing_steps={self.checkpointing_steps} must be >= 0 (0 = never)")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError(f"checkpoints_total_limit={self.checkpoints_total_limit} must be >= 1 or null")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r}; expected 'no', 'fp16' or 'bf16'")
        if self.report_to not in ("tensorboard", "none"):
            raise ValueError(f"report_to={self.report_to!r}; expected 'tensorboard' or 'none'")
        if self.weighting_scheme not in ("logit_normal", "uniform", "mode"):
            raise ValueError(f"weighting_scheme={self.weighting_scheme!r}; expected logit_normal, uniform or mode")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank={self.lora_rank} must be >= 0")
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm={self.max_grad_norm} must be >= 0")
        if self.sigma_shift <= 0:
            raise ValueError(f"sigma_shift={self.sigma_shift} must be > 0")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend={self.attention_backend!r}; expected one of "
                             f"{', '.join(ATTENTION_BACKENDS)}")
        if self.window_coordinate not in WINDOW_COORDINATES:
            raise ValueError(f"window_coordinate={self.window_coordinate!r}; expected one of "
                             f"{', '.join(WINDOW_COORDINATES)}")
        if self.window_shift <= 0:
            raise ValueError(f"window_shift={self.window_shift} must be > 0")
        if self.resolution < 16 or self.resolution % 16:
            raise ValueError(f"resolution={self.resolution} must be a positive multiple of 16")

    # --- loading --------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        return cls(**{name: _coerce(name, value, hints[name]) for name, value in values.items()})

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, overrides: list[str] | None = None):
        """Load ``path`` (YAML mapping; may be None) and apply ``key=value`` overrides (values parsed as YAML)."""
        import yaml

        values: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise InputError(f"config file {str(path)!r} does not exist")
            loaded = yaml.safe_load(path.read_text()) or {}
            if not isinstance(loaded, dict):
                raise InputError(f"config file {str(path)!r} must hold a mapping of option: value")
            values.update(loaded)
        for item in overrides or []:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise InputError(f"override {item!r} is not of the form key=value")
            values[key.strip().replace("-", "_")] = yaml.safe_load(raw)
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def help(cls) -> dict[str, str]:
        hints = typing.get_type_hints(cls)
        return {f.name: f"{f.metadata.get('help', '')} ({hints.get(f.name, '')})" for f in dataclasses.fields(cls)}


@dataclass
class SFTConfig(TrainingConfig):
    """Supervised fine-tuning with task-adaptive timestep scheduling (DESIGN §6)."""

    face_lambda: float = field(default=1.0, metadata={"help": "λ_face, weight of the face-region term."})
    w_clean: float = field(default=1.0, metadata={"help": "w(σ=0) of the identity-constraint decay."})
    w_noisy: float = field(default=0.1, metadata={"help": "w(σ=1) of the identity-constraint decay (linear)."})
    identity_decay: Literal["linear", "flat"] = field(default="linear", metadata={
        "help": "Training-time identity-constraint decay w(σ) of the face term: linear (w_clean at σ = 0 to "
                "w_noisy at σ = 1, the paper's group-composition schedule) or flat (w_clean at every σ, the "
                "ablation). Not the inference strength profile (`--id-profile`)."})
    window_sampling_fraction: float = field(default=0.5, metadata={
        "help": "Age task: fraction of samples whose σ is drawn uniformly inside the identity window."})
    age_window: tuple[float, float] | None = field(default=None, metadata={
        "help": "Override the age task's identity window (σ_lo, σ_hi); default the preset (0.3, 0.6)."})
    identity_dropout: float = field(default=0.0, metadata={"help": "Probability of dropping all identities."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.face_lambda < 0:
            raise ValueError(f"face_lambda={self.face_lambda} must be >= 0")
        if self.w_clean < 0 or self.w_noisy < 0:
            raise ValueError(f"w_clean={self.w_clean} and w_noisy={self.w_noisy} must be >= 0")
        if self.identity_decay not in IDENTITY_DECAYS:
            raise ValueError(f"identity_decay={self.identity_decay!r}; expected one of {', '.join(IDENTITY_DECAYS)}")
        if not 0.0 <= self.window_sampling_fraction <= 1.0:
            raise ValueError(f"window_sampling_fraction={self.window_sampling_fraction} must be in [0, 1]")
        if not 0.0 <= self.identity_dropout < 1.0:
            raise ValueError(f"identity_dropout={self.identity_dropout} must be in [0, 1)")
        if self.age_window is not None:
            from idglow.schedule import IdentityWindow

            self.age_window = tuple(float(v) for v in self.age_window)
            IdentityWindow(*self.age_window)


def _default_alpha() -> dict[str, float]:
    from idglow.preferences import default_weights

    return default_weights()


@dataclass
class DPOConfig(TrainingConfig):
    """Group-level weighted-margin Flow-DPO (DESIGN §6). β follows L = −log σ(−β·Δ − m) (no ½): β = 2500
    here matches Diffusion-DPO's β = 5000 with its ½ factor.

    α per preference question is ``alpha`` (question name → weight, defaults from ``idglow.preferences``);
    ``alpha_<question>: value`` in YAML or on the command line sets one entry."""

    learning_rate: float = 1e-5
    loss_type: str = field(default=DEFAULT_DPO_LOSS, metadata={
        "help": "The DPO loss, by name in idglow.losses.DPO_LOSSES: weighted_margin (−log σ(−β·Δ − m)) or hinge "
                "(max(0, 1 + β·Δ + m))."})
    beta: float = field(default=2500.0, metadata={"help": "β of the DPO loss (no ½ factor)."})
    gamma: float = field(default=0.0, metadata={"help": "Margin scale: m_d = γ·s_d."})
    alpha: dict[str, float] = field(default_factory=_default_alpha, metadata={
        "help": "α per preference question (a per-person question's α applies to each person); a question "
                "left out takes its declared default weight."})
    use_agreement_as_strength: bool = field(default=False, metadata={
        "help": "Use annotator agreement instead of the slight/clear strength as s_d."})
    missing_strength: float = field(default=0.5, metadata={
        "help": "s_d where a pair gives no strength (a tie on overall, an unrated vote, a missing agreement): "
                "0.5 = slight (default), 1.0 = clear."})
    split: str | None = field(default="train", metadata={"help": "Export split to train on (null = all)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        from idglow.losses import DPO_LOSSES
        from idglow.preferences import default_weights

        if self.loss_type not in DPO_LOSSES:
            raise ValueError(f"loss_type={self.loss_type!r}; expected one of {', '.join(DPO_LOSSES)}")
        if not 0.0 <= self.missing_strength <= 1.0:
            raise ValueError(f"missing_strength={self.missing_strength} must be in [0, 1] (0.5 slight, 1.0 clear)")
        if self.beta <= 0:
            raise ValueError(f"beta={self.beta} must be > 0")
        if self.gamma < 0:
            raise ValueError(f"gamma={self.gamma} must be >= 0")
        known = default_weights()
        unknown = sorted(set(self.alpha) - set(known))
        if unknown:
            raise ValueError(f"alpha names {', '.join(unknown)}, which is not a preference dimension; expected "
                             f"{', '.join(known)}")
        self.alpha = {**known, **{k: float(v) for k, v in self.alpha.items()}}
        for name, value in self.alpha.items():
            if value < 0:
                raise ValueError(f"alpha_{name}={value} must be >= 0")
        if not any(v > 0 for v in self.alpha.values()):
            raise ValueError("every alpha is 0: at least one preference dimension must have weight")

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        """As :meth:`TrainingConfig.from_dict`, with ``alpha_<question>`` keys folded into ``alpha``."""
        values = dict(values)
        alpha = dict(values.pop("alpha", None) or {})
        for key in [k for k in values if k.startswith("alpha_")]:
            alpha[key.removeprefix("alpha_")] = values.pop(key)
        if alpha:
            values["alpha"] = alpha
        return super().from_dict(values)

    def alpha_vector(self, num_slots: int | None = None) -> list[float]:
        """α in the DPO dimension layout of ``idglow.preferences.dpo_dimensions(num_slots)`` (default: the
        batch layout, MAX_SUBJECTS people)."""
        from idglow.preferences import weight_vector
        from idglow.subjects import MAX_SUBJECTS

        return weight_vector(self.alpha, MAX_SUBJECTS if num_slots is None else num_slots)


def _literal_from_bool(value: bool, choices: tuple[Any, ...]) -> Any:
    """YAML 1.1 reads ``no``/``yes``/``off``/``on`` as booleans: give back the one choice written that way."""
    import yaml

    matches = [c for c in choices if isinstance(c, str) and yaml.safe_load(c) is value]
    return matches[0] if len(matches) == 1 else value


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the number its field declares: YAML reads ``1e-4`` (no dot) as a string, and ``2`` as
    an int where a float is meant; a string choice that YAML read as a boolean (``no``) is the string again."""
    if typing.get_origin(hint) is typing.Literal and isinstance(value, bool):
        return _literal_from_bool(value, typing.get_args(hint))
    kinds = set(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types.UnionType) else {hint}
    number = float if float in kinds else int if int in kinds else None
    if number is None or value is None or isinstance(value, (bool, number)):
        return value
    if number is int and isinstance(value, float) and value.is_integer():
        return int(value)
    error = InputError(f"{name}={value!r} is not {'an integer' if number is int else 'a number'}")
    if not isinstance(value, (str, int)):
        raise error
    try:
        return number(value)
    except ValueError:
        raise error from None
