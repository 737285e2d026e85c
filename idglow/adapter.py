"""The identity adapter: subject embeddings → identity tokens → cross-attention into FLUX's image stream.

Each subject's face embedding goes through a shared resampler to K tokens of the transformer's inner width,
plus a learned slot embedding so that person i stays person i without masks. Small identity cross-attention
modules sit after every ``double_interval``-th double-stream block and every ``single_interval``-th
single-stream block and add ``gate(σ) · IDAttn(h, tokens)`` to the image tokens, with each slot's scale applied
to that slot's value vectors.

The modules are attached with diffusers' ``HookRegistry`` (no copy of FLUX's forward). Per-call state (tokens,
scales, window) lives in a ``ContextVar`` that the hooks read, so one transformer can serve several adapters
and concurrent requests without any model object being mutated per request. When the gate is 0 for every
sample, or every scale is 0, the identity attention is not computed and the transformer's output is
bit-identical to the base model's.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from idglow.schedule import IdentityWindow

logger = logging.getLogger(__name__)

BLOCK_HOOK = "idglow_identity"
SIGMA_HOOK = "idglow_sigma"


class IdentityCrossAttention(nn.Module):
    """Image tokens attend to identity tokens. Returns the residual to add (B, L, dim)."""

    def __init__(self, dim: int, token_dim: int, attn_dim: int, num_heads: int, zero_init: bool = True):
        super().__init__()
        if attn_dim % num_heads:
            raise ValueError(f"attn_dim={attn_dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.to_q = nn.Linear(dim, attn_dim, bias=False)
        self.to_k = nn.Linear(token_dim, attn_dim, bias=False)
        self.to_v = nn.Linear(token_dim, attn_dim, bias=False)
        self.to_out = nn.Linear(attn_dim, dim)
        if zero_init:  # a fresh adapter leaves the base model unchanged
            nn.init.zeros_(self.to_out.weight)
            nn.init.zeros_(self.to_out.bias)

    def forward(self, hidden: torch.Tensor, tokens: torch.Tensor, token_scale: torch.Tensor) -> torch.Tensor:
        """hidden (B, L, dim); tokens (B, T, token_dim); token_scale (B, T) → (B, L, dim)."""
        b, length, _ = hidden.shape
        heads = self.num_heads
        q = self.to_q(self.norm(hidden)).view(b, length, heads, -1).transpose(1, 2)
        k = self.to_k(tokens).view(b, tokens.shape[1], heads, -1).transpose(1, 2)
        v = (self.to_v(tokens) * token_scale.unsqueeze(-1)).view(b, tokens.shape[1], heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, length, -1))


@dataclass
class InjectionState:
    """What one call injects. Built per call, read by the hooks through ``_ACTIVE``; never shared."""

    adapter: IdGlowAdapter
    tokens: torch.Tensor  # (B or 1, T, D)
    token_scale: torch.Tensor  # (B or 1, T)
    window: IdentityWindow
    gate: torch.Tensor | None = None  # (B,) for the transformer call in progress; None → inject nothing
    gate_is_one: bool = True  # every sample fully inside the window: no multiply (and no device sync)
    active_sigmas: list[float] = field(default_factory=list)
    transformer_calls: int = 0
    attention_calls: int = 0

    def begin_forward(self, timestep: torch.Tensor) -> None:
        sigmas = [float(s) for s in timestep.detach().float().reshape(-1).cpu()]
        gates = [self.window.gate(s) for s in sigmas]
        self.transformer_calls += 1
        if not any(g > 0.0 for g in gates):
            self.gate = None
            return
        if not self.active_sigmas or self.active_sigmas[-1] != sigmas[0]:
            self.active_sigmas.append(sigmas[0])
        self.gate = torch.tensor(gates, dtype=self.tokens.dtype, device=self.tokens.device)
        self.gate_is_one = all(g == 1.0 for g in gates)

    def residual(self, key: str, hidden: torch.Tensor) -> torch.Tensor | None:
        layer = self.adapter.layers[key] if key in self.adapter.layers else None
        if layer is None or self.gate is None:
            return None
        b = hidden.shape[0]
        tokens = self.tokens.to(hidden.dtype).expand(b, -1, -1)
        scale = self.token_scale.to(hidden.dtype).expand(b, -1)
        self.attention_calls += 1
        delta = layer(hidden, tokens, scale)
        if not self.gate_is_one:
            delta = delta * self.gate.to(hidden.dtype).view(b, 1, 1)
        return delta


_ACTIVE: ContextVar[InjectionState | None] = ContextVar("idglow_injection", default=None)


def active_injection() -> InjectionState | None:
    """The injection of the call in progress in this thread/task, if any."""
    return _ACTIVE.get()


def identity_checkpoint(function, *args, **kwargs):
    """``torch.utils.checkpoint`` that recomputes a block with the identity injection of its forward pass.

    Backward (and so checkpoint recomputation) may run in autograd's own threads, which do not see this
    thread's context, and later transformer calls may have moved the gate on. Use it as
    ``transformer.enable_gradient_checkpointing(gradient_checkpointing_func=identity_checkpoint)``.
    """
    state = _ACTIVE.get()
    saved = None if state is None else (state.gate, state.gate_is_one)

    @contextlib.contextmanager
    def recompute():
        token = _ACTIVE.set(state)
        current = None if state is None else (state.gate, state.gate_is_one)
        if state is not None:
            state.gate, state.gate_is_one = saved
        try:
            yield
        finally:
            if state is not None:
                state.gate, state.gate_is_one = current
            _ACTIVE.reset(token)

    kwargs.setdefault("use_reentrant", False)
    return torch.utils.checkpoint.checkpoint(
        function, *args, context_fn=lambda: (contextlib.nullcontext(), recompute()), **kwargs
    )


class _SigmaHook(ModelHook):
    """Reads σ (FLUX's ``timestep`` argument, already divided by 1000) at each transformer call."""

    def pre_forward(self, module, *args, **kwargs):
        state = _ACTIVE.get()
        if state is not None:
            timestep = kwargs.get("timestep")
            if timestep is None and len(args) > 3:
                timestep = args[3]
            if timestep is None:
                raise ValueError("IdGlow needs the transformer's `timestep` argument to gate identity injection")
            state.begin_forward(timestep)
        return args, kwargs


class _BlockHook(ModelHook):
    """Adds the active adapter's identity residual to a block's image-token output."""

    def __init__(self, key: str):
        super().__init__()
        self.key = key

    def post_forward(self, module, output):
        state = _ACTIVE.get()
        if state is None or state.gate is None:
            return output
        encoder_hidden, hidden = output
        delta = state.residual(self.key, hidden)
        if delta is None:
            return output
        return encoder_hidden, hidden + delta


def block_keys(num_layers: int, num_single_layers: int, double_interval: int, single_interval: int) -> list[str]:
    """Names of the blocks that get an identity module: every n-th block, counting from block 0."""
    keys = [f"double_{i}" for i in range(0, num_layers, double_interval)] if double_interval > 0 else []
    if single_interval > 0:
        keys += [f"single_{i}" for i in range(0, num_single_layers, single_interval)]
    return keys


class IdGlowAdapter(ModelMixin, ConfigMixin):
    """Identity tokens and identity cross-attention for a FLUX transformer.

    Args:
        inner_dim: the transformer's width (num_attention_heads × attention_head_dim).
        num_layers / num_single_layers: the transformer's double- and single-stream depths.
        id_dim: size of a face embedding (512 for ArcFace/insightface, 128 for dlib).
        num_tokens: identity tokens per subject (K).
        max_subjects: number of slot embeddings.
        double_interval / single_interval: an identity module after every n-th block of each kind (0 = none).
        attn_dim / num_heads: width and heads of the identity cross-attention.
        zero_init: start with zero output projections, so that a fresh adapter changes nothing.
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        inner_dim: int = 3072,
        num_layers: int = 19,
        num_single_layers: int = 38,
        id_dim: int = 512,
        num_tokens: int = 4,
        max_subjects: int = 6,
        double_interval: int = 2,
        single_interval: int = 4,
        attn_dim: int = 768,
        num_heads: int = 8,
        resampler_hidden: int = 1024,
        zero_init: bool = True,
    ):
        super().__init__()
        self.resampler = nn.Sequential(
            nn.Linear(id_dim, resampler_hidden),
            nn.GELU(),
            nn.Linear(resampler_hidden, num_tokens * inner_dim),
        )
        self.token_norm = nn.LayerNorm(inner_dim)
        self.slot_embedding = nn.Embedding(max_subjects, inner_dim)
        nn.init.normal_(self.slot_embedding.weight, std=1.0 / math.sqrt(inner_dim))
        self.layers = nn.ModuleDict(
            {
                key: IdentityCrossAttention(inner_dim, inner_dim, attn_dim, num_heads, zero_init=zero_init)
                for key in block_keys(num_layers, num_single_layers, double_interval, single_interval)
            }
        )

    @classmethod
    def from_transformer(cls, transformer: nn.Module, **kwargs) -> IdGlowAdapter:
        """An adapter shaped for ``transformer`` (depths and width read from its config)."""
        cfg = transformer.config
        return cls(
            inner_dim=cfg.num_attention_heads * cfg.attention_head_dim,
            num_layers=cfg.num_layers,
            num_single_layers=cfg.num_single_layers,
            **kwargs,
        )

    # --- identity tokens -------------------------------------------------------------------------------

    def encode(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Face embeddings (N, id_dim) or (B, N, id_dim), in slot order → identity tokens (B, N·K, inner_dim)."""
        if embeddings.ndim == 2:
            embeddings = embeddings.unsqueeze(0)
        b, n, d = embeddings.shape
        cfg = self.config
        if d != cfg.id_dim:
            raise ValueError(f"face embeddings have size {d}, but this adapter expects id_dim={cfg.id_dim}")
        if n > cfg.max_subjects:
            raise ValueError(f"{n} subjects given, but this adapter has max_subjects={cfg.max_subjects}")
        param = self.slot_embedding.weight
        x = embeddings.to(device=param.device, dtype=param.dtype)
        x = F.normalize(x, dim=-1)
        tokens = self.resampler(x).view(b, n, cfg.num_tokens, cfg.inner_dim)
        tokens = self.token_norm(tokens) + self.slot_embedding.weight[:n].view(1, n, 1, -1)
        return tokens.reshape(b, n * cfg.num_tokens, cfg.inner_dim)

    def token_scales(self, slot_scales: torch.Tensor) -> torch.Tensor:
        """Per-slot scales (N,) or (B, N) → per-token scales (B, N·K)."""
        if slot_scales.ndim == 1:
            slot_scales = slot_scales.unsqueeze(0)
        return slot_scales.repeat_interleave(self.config.num_tokens, dim=1)

    # --- attaching -------------------------------------------------------------------------------------

    def check_compatible(self, transformer: nn.Module) -> None:
        cfg, tcfg = self.config, transformer.config
        inner = tcfg.num_attention_heads * tcfg.attention_head_dim
        if inner != cfg.inner_dim:
            raise ValueError(f"adapter inner_dim={cfg.inner_dim} does not match the transformer's width {inner}")
        if (tcfg.num_layers, tcfg.num_single_layers) != (cfg.num_layers, cfg.num_single_layers):
            raise ValueError(
                f"adapter was built for {cfg.num_layers} double / {cfg.num_single_layers} single blocks, the "
                f"transformer has {tcfg.num_layers} / {tcfg.num_single_layers}"
            )

    def attach(self, transformer: nn.Module) -> None:
        """Register the identity hooks on ``transformer`` (idempotent; one set of hooks serves every adapter)."""
        self.check_compatible(transformer)
        attach_identity_hooks(transformer)

    @contextlib.contextmanager
    def inject(
        self,
        embeddings: torch.Tensor,
        slot_scales: torch.Tensor | Sequence[float] | float = 1.0,
        window: IdentityWindow | None = None,
    ) -> Iterator[InjectionState | None]:
        """Within this context, transformer calls (with hooks attached) inject these identities.

        embeddings: (N, id_dim) or (B, N, id_dim). slot_scales: a float, (N,) or (B, N). Yields the
        per-call state (active σ values, call counts), or None when every scale is 0 or N == 0, in which
        case nothing is injected.
        """
        window = window or IdentityWindow()
        n = embeddings.shape[-2] if embeddings.numel() else 0
        scales = torch.as_tensor(slot_scales, dtype=torch.float32)
        if scales.ndim == 0:
            scales = scales.expand(max(n, 1)).clone()
        if n == 0 or not bool((scales != 0).any()):
            token = _ACTIVE.set(None)
            try:
                yield None
            finally:
                _ACTIVE.reset(token)
            return
        tokens = self.encode(embeddings)
        state = InjectionState(
            adapter=self,
            tokens=tokens,
            token_scale=self.token_scales(scales.to(tokens.device, tokens.dtype)),
            window=window,
        )
        token = _ACTIVE.set(state)
        try:
            yield state
        finally:
            _ACTIVE.reset(token)


def attach_identity_hooks(transformer: nn.Module) -> None:
    """Put IdGlow's hooks on every block of a FLUX transformer, once.

    Attach before enabling a diffusers cache (e.g. FirstBlockCache): hooks registered later wrap earlier
    ones, so a cache that skips a block then also skips its identity residual and reuses the cached one.
    """
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(SIGMA_HOOK) is not None:
        return
    for kind, blocks in (("double", transformer.transformer_blocks), ("single", transformer.single_transformer_blocks)):
        for i, block in enumerate(blocks):
            block_registry = HookRegistry.check_if_exists_or_initialize(block)
            if block_registry._hook_order:
                logger.warning(
                    "block %s_%d already has hooks %s; attach IdGlow before enabling caches",
                    kind, i, block_registry._hook_order,
                )
            block_registry.register_hook(_BlockHook(f"{kind}_{i}"), BLOCK_HOOK)
    registry.register_hook(_SigmaHook(), SIGMA_HOOK)


def detach_identity_hooks(transformer: nn.Module) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(SIGMA_HOOK) is None:
        return
    registry.remove_hook(SIGMA_HOOK, recurse=False)
    for blocks in (transformer.transformer_blocks, transformer.single_transformer_blocks):
        for block in blocks:
            HookRegistry.check_if_exists_or_initialize(block).remove_hook(BLOCK_HOOK, recurse=False)
