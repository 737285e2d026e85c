"""The identity adapter: subject embeddings → identity tokens → cross-attention into FLUX's image stream.

Each subject's face embedding goes through a shared resampler to K tokens of the transformer's inner width,
plus a learned slot embedding so that person i stays person i without masks. Small identity cross-attention
modules sit after every ``double_interval``-th double-stream block and every ``single_interval``-th
single-stream block and add ``IDAttn(h, tokens; s)`` to the image tokens, where each slot's scale s = weight ×
gate(σ) weighs that slot's tokens (value × s, attention logit + log s, so s = 0 masks the slot out) and the
output bias is scaled by the sample's largest s: the whole residual vanishes, continuously, as the scales go to
0, and a sample gated off equals the base model whatever its batch-mates get. The first block's residual is
added at the second block's input (the same sum), so that caches deciding from the first block's output see
the base model's change between steps.

The modules are attached with diffusers' ``HookRegistry`` (no copy of FLUX's forward). Per-call state (tokens,
scales, window) lives in a ``ContextVar``, so one transformer can serve several adapters and concurrent
requests without any model object being changed by a request. A hook around each transformer call reads it,
computes the gates at this call's σ and hands each block hook a :class:`BlockIdentity` (tensors and the
block's identity module) for the duration of the call; calls through one transformer take turns. The block
hooks thus run no Python that TorchDynamo cannot trace: ``transformer.compile_repeated_blocks()`` compiles
them without graph breaks, and gating only switches between two compiled graphs per block kind (with or
without identity). When the gate is 0 for every sample, or every scale is 0, the identity attention is not
computed and the transformer's output is bit-identical to the base model's.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
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
    """Image tokens attend to identity tokens. Returns the residual to add (B, L, dim).

    ``token_scale`` (B, T) ≥ 0 weighs each identity token: its value vector is multiplied by the scale and
    log(scale) is added to its attention logit, so a token at scale 0 is masked out (padded slots and people
    switched off take no attention from the others) and a scale tending to 0 fades the token out smoothly.
    The output projection's bias is multiplied by each sample's largest scale, so the whole residual scales
    with a common factor: a sample whose scales are all 0 gets exactly zero residual, whatever its batch-mates
    get, and the residual is continuous as the scales go to 0.
    """

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
        """hidden (B, L, dim); tokens (B, T, token_dim); token_scale (B, T) ≥ 0 → (B, L, dim)."""
        b, length, _ = hidden.shape
        heads = self.num_heads
        scale = token_scale.to(hidden.dtype)
        q = self.to_q(self.norm(hidden)).view(b, length, heads, -1).transpose(1, 2)
        k = self.to_k(tokens).view(b, tokens.shape[1], heads, -1).transpose(1, 2)
        v = (self.to_v(tokens) * scale.unsqueeze(-1)).view(b, tokens.shape[1], heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=scale_mask(scale)[:, None, None, :])
        out = F.linear(out.transpose(1, 2).reshape(b, length, -1), self.to_out.weight)
        if self.to_out.bias is None:
            return out
        return out + self.to_out.bias * scale.amax(dim=-1).view(b, 1, 1)


def scale_mask(scale: torch.Tensor) -> torch.Tensor:
    """Additive attention mask (B, T) from token scales: log(scale), −inf where the scale is 0; a sample whose
    scales are all 0 gets a zero mask (its values are all 0, so its attention output is 0 either way)."""
    positive = scale > 0
    logits = torch.where(positive, scale.clamp_min(torch.finfo(scale.dtype).tiny).log(), float("-inf"))
    return torch.where(positive.any(dim=-1, keepdim=True), logits, torch.zeros_like(logits))


SigmaSource = Callable[[], "torch.Tensor | float | None"]


@dataclass
class InjectionState:
    """What one call injects. Built per call and read through ``_ACTIVE`` by the hook around each transformer
    call, which hands the blocks their part of it; never shared.

    ``windows`` holds one IdentityWindow per slot: at each transformer call every slot's gate g(σ) is folded
    into that slot's scale, so people in one image may follow different windows. σ comes from
    ``sigma_source`` (the scheduler's float32 σ) when given, else from the transformer's ``timestep``
    argument (which the pipeline may have rounded to the model's dtype).
    """

    adapter: IdGlowAdapter
    tokens: torch.Tensor  # (B or 1, T, D)
    slot_scale: torch.Tensor  # (B or 1, N), float32
    windows: tuple[IdentityWindow, ...]  # one per slot
    sigma_source: SigmaSource | None = None
    token_scale: torch.Tensor | None = None  # (B, T) for the transformer call in progress; None → inject nothing
    active_sigmas: list[float] = field(default_factory=list)
    transformer_calls: int = 0
    attention_calls: int = 0  # identity modules handed to blocks (a block that a cache skips still counts)
    _last_gates: tuple | None = None

    def schedule_sigmas(self, timestep: torch.Tensor) -> list[float]:
        """σ per sample for this transformer call, in float32 from ``sigma_source`` when it has one."""
        batch = timestep.reshape(-1).shape[0]
        source = self.sigma_source() if self.sigma_source is not None else None
        values = timestep if source is None else source
        sigmas = torch.as_tensor(values).detach().to("cpu", torch.float32).reshape(-1)
        if sigmas.shape[0] == 1 and batch > 1:
            sigmas = sigmas.expand(batch)
        return [float(s) for s in sigmas]

    def begin_forward(self, timestep: torch.Tensor) -> None:
        """Compute every slot's gate at this call's σ and the per-token scales the identity layers use."""
        sigmas = self.schedule_sigmas(timestep)
        gates = tuple(tuple(w.gate(s) for w in self.windows) for s in sigmas)
        self.transformer_calls += 1
        if not any(g > 0.0 for row in gates for g in row):
            self.token_scale, self._last_gates = None, gates
            return
        if not self.active_sigmas or self.active_sigmas[-1] != sigmas[0]:
            self.active_sigmas.append(sigmas[0])
        if gates == self._last_gates and self.token_scale is not None:
            return  # same gates as the previous call: reuse the scales (no new tensor, no copy)
        gate = torch.tensor(gates, dtype=torch.float32).to(self.slot_scale.device)
        scale = self.slot_scale * gate
        self._last_gates = gates
        self.token_scale = self.adapter.token_scales(scale) if bool((scale > 0).any()) else None


_ACTIVE: ContextVar[InjectionState | None] = ContextVar("idglow_injection", default=None)
# Whether any thread is inside ``inject`` right now: while none is, a transformer call skips the ContextVar.
_injecting = 0
_ANY_INJECTING = False
_INJECTING_LOCK = threading.Lock()


@contextlib.contextmanager
def _injecting_scope() -> Iterator[None]:
    global _injecting, _ANY_INJECTING
    with _INJECTING_LOCK:
        _injecting += 1
        _ANY_INJECTING = True
    try:
        yield
    finally:
        with _INJECTING_LOCK:
            _injecting -= 1
            _ANY_INJECTING = _injecting > 0


@dataclass(frozen=True)
class BlockIdentity:
    """What one transformer block injects during the transformer call in progress.

    ``layer`` is the block's own identity module (its residual is added to the block's output); ``previous`` is
    the module of the block before it (added to this block's input). The transformer-level hook hands each
    block hook one of these before the call and takes it back after, so the block hooks read only tensors and
    modules: TorchDynamo traces them without graph breaks, and the blocks of one kind share compiled graphs.
    """

    tokens: torch.Tensor  # (B or 1, T, D)
    token_scale: torch.Tensor  # (B or 1, T)
    layer: IdentityCrossAttention | None = None
    previous: IdentityCrossAttention | None = None

    def residual(self, layer: IdentityCrossAttention, hidden: torch.Tensor) -> torch.Tensor:
        b = hidden.shape[0]
        tokens = self.tokens.to(hidden.dtype).expand(b, -1, -1)
        return layer(hidden, tokens, self.token_scale.to(hidden.device).expand(b, -1))


def identity_checkpoint(function, *args, **kwargs):
    """``torch.utils.checkpoint`` that recomputes a block with the identity injection of its forward pass.

    The block hooks hold the identity of a transformer call only while that call runs; backward (and so
    checkpoint recomputation) comes later, possibly in autograd's own threads. Use it as
    ``transformer.enable_gradient_checkpointing(gradient_checkpointing_func=identity_checkpoint)``.
    """
    hook = _block_hook(function)
    saved = None if hook is None else hook.identity

    @contextlib.contextmanager
    def recompute():
        if hook is None:
            yield
            return
        with hook.lock:  # no other transformer call may use the block hooks meanwhile
            current, hook.identity = hook.identity, saved
            try:
                yield
            finally:
                hook.identity = current

    kwargs.setdefault("use_reentrant", False)
    return torch.utils.checkpoint.checkpoint(
        function, *args, context_fn=lambda: (contextlib.nullcontext(), recompute()), **kwargs
    )


@functools.cache
def _positions(forward) -> tuple[str, ...]:
    """The positional parameter names of a ``forward`` function, without ``self`` (read once per class)."""
    return tuple(inspect.signature(forward).parameters)[1:]


def _argument(module: nn.Module, name: str, args: tuple, kwargs: dict):
    """The value of ``module.forward``'s parameter ``name`` in this call, by keyword or by its position."""
    if name in kwargs:
        return kwargs[name]
    names = _positions(type(module).forward)
    index = names.index(name) if name in names else len(args)
    return args[index] if index < len(args) else None


class _CallLock:
    """The lock that makes calls through one transformer take turns. A deep copy of the transformer gets a
    lock of its own (a thread lock cannot be copied)."""

    def __init__(self):
        self._lock = threading.RLock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc) -> None:
        self._lock.release()

    def __deepcopy__(self, memo) -> _CallLock:
        return _CallLock()


# transformer block → its identity hook, for identity_checkpoint (which is handed the block itself)
_BLOCK_HOOKS: weakref.WeakKeyDictionary[nn.Module, _BlockHook] = weakref.WeakKeyDictionary()


def _block_hook(function) -> _BlockHook | None:
    """The identity hook of a transformer block, if ``function`` is a block that has one."""
    return _BLOCK_HOOKS.get(function) if isinstance(function, nn.Module) else None


class _SigmaHook(ModelHook):
    """Runs around each transformer call: reads σ (FLUX's ``timestep`` argument is σ = t / 1000), sets the
    gates, and hands every block hook its :class:`BlockIdentity` for this call, taken back when the call
    returns. Calls through one transformer take turns (a lock), since the block hooks hold the call's identity.
    """

    def __init__(self, block_hooks: list[_BlockHook], lock: _CallLock):
        super().__init__()
        self.block_hooks = block_hooks
        self.lock = lock

    def new_forward(self, module, *args, **kwargs):
        state = _ACTIVE.get() if _ANY_INJECTING else None
        with self.lock:
            if state is not None:
                timestep = _argument(module, "timestep", args, kwargs)
                if timestep is None:
                    raise ValueError("IdGlow needs the transformer's `timestep` argument to gate identity injection")
                state.begin_forward(timestep)
            self.hand_out(state)
            try:
                return self.fn_ref.original_forward(*args, **kwargs)
            finally:
                self.hand_out(None)

    def hand_out(self, state: InjectionState | None) -> None:
        """Give each block hook what it injects in this call (None: nothing, the base model's graph)."""
        if state is None or state.token_scale is None:
            for hook in self.block_hooks:
                hook.identity = None
            return
        layers = state.adapter.layers
        for tensor in (state.tokens, state.token_scale):  # any number of people: one graph (T symbolic)
            torch._dynamo.maybe_mark_dynamic(tensor, 1)
        for hook in self.block_hooks:
            layer = layers[hook.key] if hook.key in layers else None
            previous = layers[hook.previous] if hook.previous in layers else None
            hook.identity = None
            if layer is not None or previous is not None:
                hook.identity = BlockIdentity(state.tokens, state.token_scale, layer, previous)
                state.attention_calls += (layer is not None) + (previous is not None)


class _BlockHook(ModelHook):
    """Adds identity residuals to a block's image tokens, from the :class:`BlockIdentity` it holds (if any).

    ``key``: the block's own identity module, added to its output. ``previous``: the identity module of the
    block before it, added to this block's input instead of that block's output. The first block's residual
    is added this way so that a cache deciding from the first block's output (diffusers' FirstBlockCache)
    sees the base model's change between steps, not the identity residual, and skips it with the rest.
    """

    def __init__(self, key: str | None, previous: str | None, hidden_position: int, lock: _CallLock):
        super().__init__()
        self.key = key
        self.previous = previous
        self.hidden_position = hidden_position
        self.lock = lock
        self.identity: BlockIdentity | None = None

    def pre_forward(self, module, *args, **kwargs):
        identity = self.identity
        if identity is None or identity.previous is None:
            return args, kwargs
        if "hidden_states" in kwargs:
            hidden = kwargs["hidden_states"]
            return args, {**kwargs, "hidden_states": hidden + identity.residual(identity.previous, hidden)}
        i = self.hidden_position
        hidden = args[i]
        return (*args[:i], hidden + identity.residual(identity.previous, hidden), *args[i + 1:]), kwargs

    def post_forward(self, module, output):
        identity = self.identity
        if identity is None or identity.layer is None:
            return output
        encoder_hidden, hidden = output
        return encoder_hidden, hidden + identity.residual(identity.layer, hidden)


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
        window: IdentityWindow | Sequence[IdentityWindow] | None = None,
        sigma_source: SigmaSource | None = None,
    ) -> Iterator[InjectionState | None]:
        """Within this context, transformer calls (with hooks attached) inject these identities.

        embeddings: (N, id_dim) or (B, N, id_dim). slot_scales: a float, (N,) or (B, N), each ≥ 0. window: one
        IdentityWindow for every slot, or one per slot (default: always on). sigma_source: a callable giving
        the current σ in float32 (one value or one per sample); without it the gate reads the transformer's
        ``timestep`` argument. Yields the per-call state (active σ values, call counts), or None when every
        scale is 0 or N == 0, in which case nothing is injected.
        """
        n = embeddings.shape[-2] if embeddings.numel() else 0
        scales = torch.as_tensor(slot_scales, dtype=torch.float32)
        if scales.ndim == 0:
            scales = scales.expand(max(n, 1)).clone()
        if bool((scales < 0).any()) or not bool(torch.isfinite(scales).all()):
            raise ValueError(f"identity scales must be finite and >= 0; got {scales.tolist()}")
        windows = _slot_windows(window, n)
        if n == 0 or not bool((scales != 0).any()):
            token = _ACTIVE.set(None)
            try:
                yield None
            finally:
                _ACTIVE.reset(token)
            return
        tokens = self.encode(embeddings)
        slot_scale = scales.to(tokens.device)
        state = InjectionState(
            adapter=self,
            tokens=tokens,
            slot_scale=slot_scale if slot_scale.ndim == 2 else slot_scale.unsqueeze(0),
            windows=windows,
            sigma_source=sigma_source,
        )
        token = _ACTIVE.set(state)
        try:
            with _injecting_scope():
                yield state
        finally:
            _ACTIVE.reset(token)


def _slot_windows(window: IdentityWindow | Sequence[IdentityWindow] | None, n: int) -> tuple[IdentityWindow, ...]:
    if window is None or isinstance(window, IdentityWindow):
        return (window or IdentityWindow(),) * n
    windows = tuple(window)
    if len(windows) != n:
        raise ValueError(f"{len(windows)} identity windows given for {n} subjects; give one, or one per subject")
    return windows


def attach_identity_hooks(transformer: nn.Module) -> None:
    """Put IdGlow's hooks on every block of a FLUX transformer, once.

    Attach before enabling a diffusers cache (e.g. FirstBlockCache): hooks registered later wrap earlier
    ones, so a cache that skips a block then also skips its identity residual and reuses the cached one.
    """
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(SIGMA_HOOK) is not None:
        return
    blocks = [(f"double_{i}", b) for i, b in enumerate(transformer.transformer_blocks)]
    blocks += [(f"single_{i}", b) for i, b in enumerate(transformer.single_transformer_blocks)]
    lock = _CallLock()
    hooks = []
    for position, (key, block) in enumerate(blocks):
        block_registry = HookRegistry.check_if_exists_or_initialize(block)
        if block_registry.hooks:
            logger.warning("block %s already has hooks %s; attach IdGlow before enabling caches",
                           key, sorted(block_registry.hooks))
        hidden_position = _positions(type(block).forward).index("hidden_states")
        if position == 0 and len(blocks) > 1:
            hook = _BlockHook(None, None, hidden_position, lock)  # its residual is added at the next block's input
        else:
            hook = _BlockHook(key, blocks[0][0] if position == 1 else None, hidden_position, lock)
        block_registry.register_hook(hook, BLOCK_HOOK)
        _BLOCK_HOOKS[block] = hook
        hooks.append(hook)
    registry.register_hook(_SigmaHook(hooks, lock), SIGMA_HOOK)
