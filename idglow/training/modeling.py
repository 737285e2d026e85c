"""The trainable model: a FLUX transformer with an IdGlow adapter (and optional LoRA), wrapped as one module
so that accelerate/DDP see every trainable parameter; plus latent packing helpers and a small Euler sampler
used on latent-space worlds (no VAE)."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from idglow.adapter import IdGlowAdapter
from idglow.schedule import IdentityWindow
from idglow.training.config import ATTENTION_BACKENDS

logger = logging.getLogger(__name__)


def attention_backend(name: str) -> contextlib.AbstractContextManager:
    """A context that limits ``F.scaled_dot_product_attention`` to the kernels ``name`` stands for
    (see ``ATTENTION_BACKENDS``); ``"auto"`` changes nothing. The selection is process-wide, so a backward
    pass run inside the context (in autograd's device threads too) uses the same kernels."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend={name!r}; expected one of {', '.join(ATTENTION_BACKENDS)}")
    kernels = ATTENTION_BACKENDS[name]
    if kernels is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, k) for k in kernels])


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → FLUX tokens (B, H/2·W/2, 4C), row-major over 2×2 patches (FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"latent size {h}x{w} must be even to pack 2x2 patches")
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of ``pack_latents``: (B, L, 4C) → (B, C, height, width)."""
    b, _, d = tokens.shape
    c = d // 4
    x = tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, height, width)


def pack_masks(masks: torch.Tensor) -> torch.Tensor:
    """Latent-pixel masks (B, N, H, W) → token masks (B, N, H/2·W/2): a token is in a region when any of its
    2×2 latent pixels is."""
    b, n, h, w = masks.shape
    pooled = F.max_pool2d(masks.float().reshape(b * n, 1, h, w), kernel_size=2)
    return pooled.reshape(b, n, (h // 2) * (w // 2))


def latent_image_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """FLUX position ids (H/2·W/2, 3) of a packed (height × width) latent."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class IdGlowDenoiser(nn.Module):
    """transformer + adapter (+ a frozen reference adapter for DPO) behind one ``forward``.

    ``forward`` predicts the packed velocity for packed noisy latents at per-sample σ, with the identity of
    each sample injected at ``id_scales`` (B, N) — the trainer folds each sample's gate g(σ) into its scales,
    so one batch may mix tasks with different windows. ``reference=True`` runs the frozen reference instead
    (reference adapter, LoRA disabled).
    """

    def __init__(self, transformer: nn.Module, adapter: IdGlowAdapter, guidance_scale: float = 3.5):
        super().__init__()
        self.transformer = transformer
        self.adapter = adapter
        self.guidance_scale = guidance_scale
        self.ref_adapter: IdGlowAdapter | None = None
        adapter.attach(transformer)

    @property
    def has_lora(self) -> bool:
        return bool(getattr(self.transformer, "peft_config", None))

    def add_lora(self, rank: int, alpha: float | None = None, target_modules: list[str] | None = None) -> None:
        from peft import LoraConfig

        config = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
                            target_modules=target_modules or ["to_q", "to_k", "to_v", "to_out.0"])
        self.transformer.add_adapter(config)

    def make_reference(self) -> None:
        """Freeze a copy of the current adapter as the DPO reference (LoRA, if any, is disabled for it)."""
        ref = copy.deepcopy(self.adapter)
        ref.requires_grad_(False)
        ref.eval()
        ref.attach(self.transformer)
        # Not a registered submodule: DDP must not see it, and checkpoints need not store it twice.
        object.__setattr__(self, "ref_adapter", ref)

    def forward(
        self,
        hidden_states: torch.Tensor,
        sigmas: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        img_ids: torch.Tensor,
        id_embeds: torch.Tensor | None = None,
        id_scales: torch.Tensor | None = None,
        txt_ids: torch.Tensor | None = None,
        reference: bool = False,
    ) -> torch.Tensor:
        """hidden_states (B, L, 4C); sigmas (B,); encoder_hidden_states (B, T, D); pooled_projections (B, P);
        img_ids (L, 3); id_embeds (B, N, id_dim); id_scales (B, N) → velocity (B, L, 4C)."""
        b = hidden_states.shape[0]
        if txt_ids is None:
            txt_ids = torch.zeros(encoder_hidden_states.shape[1], 3, device=hidden_states.device,
                                  dtype=img_ids.dtype)
        guidance = None
        if getattr(self.transformer.config, "guidance_embeds", False):
            guidance = torch.full((b,), self.guidance_scale, device=hidden_states.device, dtype=torch.float32)
        adapter = self.adapter
        if reference:
            if self.ref_adapter is None:
                raise RuntimeError("no reference adapter: call make_reference() first")
            adapter = self.ref_adapter
        run = lambda: self.transformer(  # noqa: E731
            hidden_states=hidden_states,
            timestep=sigmas.to(hidden_states.dtype),
            guidance=guidance,
            pooled_projections=pooled_projections,
            encoder_hidden_states=encoder_hidden_states,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        if reference and self.has_lora:
            self.transformer.disable_adapters()
            try:
                return self._with_identity(adapter, run, id_embeds, id_scales)
            finally:
                self.transformer.enable_adapters()
        return self._with_identity(adapter, run, id_embeds, id_scales)

    @staticmethod
    def _with_identity(adapter, run: Callable, id_embeds, id_scales):
        if id_embeds is None or id_embeds.shape[1] == 0:
            return run()
        # The window is folded into id_scales, so the adapter's own window is always on.
        with adapter.inject(id_embeds, id_scales, IdentityWindow(0.0, 1.0)):
            return run()


@torch.no_grad()
def euler_sample(
    model: IdGlowDenoiser,
    noise: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    pooled_projections: torch.Tensor,
    id_embeds: torch.Tensor | None,
    id_mask: torch.Tensor | None,
    window: IdentityWindow | list[IdentityWindow],
    num_steps: int = 10,
    id_scale: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Integrate the flow ODE from σ = 1 to 0 with ``num_steps`` Euler steps on unpacked latents
    (B, C, H, W); identity is injected where the window's gate is on (per sample when a list is given), at
    ``id_scale`` (a float, or one value per sample (B,))."""
    b, _, h, w = noise.shape
    if isinstance(id_scale, torch.Tensor):
        if id_scale.shape != (b,):
            raise ValueError(f"id_scale has shape {tuple(id_scale.shape)}; expected a float or ({b},)")
        id_scale = id_scale.to(noise.device, torch.float32)[:, None]
    img_ids = latent_image_ids(h, w, noise.device)
    x = pack_latents(noise)
    sigmas = torch.linspace(1.0, 0.0, num_steps + 1)
    windows = window if isinstance(window, list) else [window] * b
    for i in range(num_steps):
        s = float(sigmas[i])
        sig = torch.full((b,), s, device=noise.device)
        scales = None
        if id_embeds is not None:
            gates = torch.tensor([wd.gate(s) for wd in windows], device=noise.device)
            scales = id_scale * id_mask.float() * gates[:, None]
        v = model(x, sig, encoder_hidden_states, pooled_projections, img_ids, id_embeds, scales)
        x = x + (float(sigmas[i + 1]) - s) * v
    return unpack_latents(x, h, w)


def build_synthetic_model(world, *, seed: int = 0, num_layers: int = 1, num_single_layers: int = 2,
                          heads: int = 4, head_dim: int = 16, num_tokens: int = 2,
                          axes_dims_rope: tuple[int, int, int] | None = None) -> IdGlowDenoiser:
    """A small real FluxTransformer2DModel + IdGlowAdapter operating on a SyntheticWorld's latents.

    ``axes_dims_rope`` splits ``head_dim`` between the rotary axes (default: half to the unused text/frame
    axis and a quarter to each of y and x, which needs ``head_dim`` a multiple of 8). Image tokens learn where
    they are only through RoPE, so a model that must draw at prompted positions wants several frequencies per
    spatial axis, e.g. (8, 12, 12) for ``head_dim=32``."""
    axes = tuple(axes_dims_rope or (head_dim // 2, head_dim // 4, head_dim // 4))
    if sum(axes) != head_dim or any(a % 2 for a in axes):
        raise ValueError(f"axes_dims_rope={axes} must be even and sum to head_dim={head_dim}")
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * world.channels, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=world.prompt_dim,
        pooled_projection_dim=world.pooled_dim, guidance_embeds=False,
        axes_dims_rope=axes,
    )
    torch.manual_seed(seed + 1)
    adapter = IdGlowAdapter.from_transformer(
        transformer, id_dim=world.embedding_dim, num_tokens=num_tokens, max_subjects=world.max_slots,
        double_interval=1, single_interval=1, attn_dim=heads * head_dim, num_heads=heads,
        resampler_hidden=4 * heads * head_dim,
    )
    return IdGlowDenoiser(transformer, adapter, guidance_scale=1.0)
