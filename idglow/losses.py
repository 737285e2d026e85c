"""Training losses: SFT with a face term weighted by the identity-constraint decay, and group-level weighted-margin Flow-DPO.

Conventions (flow matching, diffusers' FLUX): x_σ = (1 − σ)·x₀ + σ·ε and the velocity target is v = ε − x₀.
Latents may be packed FLUX tokens (B, L, C) or images (B, C, H, W); masks select a region and broadcast
against the prediction. Everything here is a pure function of tensors: no model, no data loading.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from idglow import preferences
from idglow.schedule import identity_constraint_weight

#: Preference dimensions of the declared questions (``idglow.preferences``), in the order the DPO data path
#: lays them out: the per-pair dimensions, then one dimension per slot for each per-person question. Code that
#: must follow a substituted declaration calls ``preferences.dimension_names()`` instead.
DPO_DIMENSIONS: tuple[str, ...] = preferences.dimension_names()


def flow_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Velocity target v = ε − x₀ (same shape as ``latents``)."""
    return noise - latents


def add_flow_noise(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """x_σ = (1 − σ)·x₀ + σ·ε. ``sigmas`` has shape (B,); the result has the shape of ``latents``."""
    s = sigmas.to(latents.dtype).reshape(-1, *([1] * (latents.ndim - 1)))
    return (1.0 - s) * latents + s * noise


def region_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean squared error over a region.

    Args:
        pred, target: (B, *S) — e.g. packed tokens (B, L, C) or latents (B, C, H, W).
        mask: None (whole tensor) or non-negative weights broadcastable to (B, *S), e.g. (B, L, 1) or
            (B, 1, H, W). An empty region gives 0.

    Returns:
        (B,) — Σ mask·(pred − target)² / Σ mask, computed in float32 (also under autocast).
    """
    with _full_precision(pred):
        return _region_mse(pred, target, mask)


def _full_precision(tensor: torch.Tensor):
    """Autocast off: under mixed precision, reductions such as einsum would otherwise run in bf16/fp16."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def _region_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        return err.reshape(err.shape[0], -1).mean(dim=1)
    mask = mask.float().expand_as(err)
    num = (mask * err).reshape(err.shape[0], -1).sum(dim=1)
    den = mask.reshape(err.shape[0], -1).sum(dim=1)
    return num / den.clamp_min(1e-12) * (den > 0)


def region_errors(pred: torch.Tensor, target: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean squared velocity error of each sample over each of D regions.

    Args:
        pred, target: (B, L, C) packed tokens.
        masks: (B, D, L) region weights (1 inside, 0 outside).

    Returns:
        (B, D) — per-region mean squared error (0 for an empty region), float32 (also under autocast).
    """
    if masks.ndim != 3 or masks.shape[0] != pred.shape[0] or masks.shape[2] != pred.shape[1]:
        raise ValueError(f"masks of shape {tuple(masks.shape)} do not fit predictions of shape {tuple(pred.shape)}")
    with _full_precision(pred):
        return _region_errors(pred, target, masks)


def _region_errors(pred: torch.Tensor, target: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    per_token = ((pred.float() - target.float()) ** 2).mean(dim=-1)  # (B, L)
    masks = masks.float()
    num = torch.einsum("bdl,bl->bd", masks, per_token)
    den = masks.sum(dim=-1)
    return num / den.clamp_min(1e-12) * (den > 0)


@dataclass
class SFTLossOutput:
    """loss: scalar. base: (B,) whole-image MSE. face: (B,) face-region MSE. face_weight: (B,) λ·w(σ)·gate."""

    loss: torch.Tensor
    base: torch.Tensor
    face: torch.Tensor
    face_weight: torch.Tensor


def sft_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    sigmas: torch.Tensor,
    face_mask: torch.Tensor | None = None,
    *,
    face_lambda: float = 1.0,
    w_clean: float = 1.0,
    w_noisy: float = 0.1,
    face_gate: torch.Tensor | None = None,
    decay: str = "linear",
) -> SFTLossOutput:
    """SFT loss with a face-region term weighted by the training-time identity-constraint decay w(σ).

    L = mean_b [ mean‖v̂ − v‖² + λ_face · w(σ_b) · g_b · mean_{face}‖v̂ − v‖² ],
    w(σ) = w_clean + (w_noisy − w_clean)·σ (``decay="linear"``) or w_clean (``decay="flat"``, the ablation);
    see :func:`idglow.schedule.identity_constraint_weight`.

    Args:
        model_pred, target: (B, *S) predicted and target velocity.
        sigmas: (B,) noise levels in [0, 1].
        face_mask: None or weights broadcastable to (B, *S) marking the target's face pixels/tokens.
        face_lambda: λ_face.
        w_clean, w_noisy: w(0) and w(1).
        face_gate: None or (B,) multiplier of the face term (the trainer passes the identity gate g(σ),
            so that the face term only counts where identity is on).
        decay: "linear" or "flat", the shape of w(σ).

    Returns:
        SFTLossOutput with the scalar loss and per-sample terms (for logging).
    """
    if sigmas.shape != (model_pred.shape[0],):
        raise ValueError(f"sigmas has shape {tuple(sigmas.shape)}, expected ({model_pred.shape[0]},)")
    base = region_mse(model_pred, target)
    weight = face_lambda * identity_constraint_weight(sigmas.float(), w_clean, w_noisy, decay)
    if face_gate is not None:
        weight = weight * face_gate.float()
    if face_mask is None:
        face = torch.zeros_like(base)
    else:
        face = region_mse(model_pred, target, face_mask)
    loss = (base + weight * face).mean()
    return SFTLossOutput(loss=loss, base=base.detach(), face=face.detach(), face_weight=weight.detach())


@dataclass
class DPOLossOutput:
    """loss: scalar. reward_accuracy: scalar, fraction of labelled (pair, dimension) entries where the
    implicit reward prefers the winner. per_dimension: tensors of shape (D,): ``accuracy``,
    ``reward_margin`` (mean of −β·Δ_d, the implicit reward of w minus that of l), ``loss`` (mean
    −log σ(−β·Δ_d − m_d)) and ``count`` (labelled pairs); dimensions with no labels give NaN."""

    loss: torch.Tensor
    reward_accuracy: torch.Tensor
    per_dimension: dict[str, torch.Tensor] = field(default_factory=dict)

    def named(self, names: Sequence[str] | None = None) -> dict[str, float]:
        """Flat ``{"accuracy/overall": ..., "reward_margin/identity_0": ...}`` for logging (labelled only);
        ``names`` default to the declared dimensions."""
        names = preferences.dimension_names() if names is None else names
        out: dict[str, float] = {}
        counts = self.per_dimension["count"]
        for key in ("accuracy", "reward_margin", "loss"):
            for d, name in enumerate(names[: counts.shape[0]]):
                if counts[d] > 0:
                    out[f"{key}/{name}"] = float(self.per_dimension[key][d])
        return out


def orient_pairs(
    err_0: torch.Tensor, err_1: torch.Tensor, preference: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orient per-dimension errors of images 0 and 1 so that "w" is the side preferred on each dimension.

    Args:
        err_0, err_1: (B, D) errors of image 0 and image 1 (any model).
        preference: (B, D) +1 where image 0 is preferred on that dimension, −1 where image 1 is, 0 for a tie
            or no label.

    Returns:
        (err_w, err_l, labelled) — (B, D), (B, D) and a (B, D) float mask, 1 where preference ≠ 0.
    """
    first = preference > 0
    err_w = torch.where(first, err_0, err_1)
    err_l = torch.where(first, err_1, err_0)
    return err_w, err_l, (preference != 0).to(err_0.dtype)


def group_dpo_loss(
    err_policy_w: torch.Tensor,
    err_policy_l: torch.Tensor,
    err_ref_w: torch.Tensor,
    err_ref_l: torch.Tensor,
    alpha: torch.Tensor,
    strength: torch.Tensor | float,
    beta: float,
    gamma: float,
) -> DPOLossOutput:
    """Fine-grained group-level weighted-margin Flow-DPO.

    For each pair b and dimension d (already oriented so that w is preferred on d):
        Δ_bd = [e_θ(w) − e_ref(w)] − [e_θ(l) − e_ref(l)]
        ℓ_bd = −log σ(−β·Δ_bd − m_bd),  m_bd = γ·s_bd
        L_b  = Σ_d α_bd·ℓ_bd / Σ_d α_bd
    and L is the mean of L_b over pairs with Σ_d α_bd > 0 (pairs that are ties on every dimension contribute
    nothing). With one dimension, γ = 0 and α = 1 this is Diffusion-DPO in velocity form (β without ½).

    Args:
        err_policy_w, err_policy_l, err_ref_w, err_ref_l: (B, D) mean squared velocity error of the policy /
            reference over each dimension's region, for the preferred (w) and the other (l) image, in float32
            (or float64). Lower precision is refused: Δ is a small difference of errors, and β·Δ at
            β ≈ 10³ would be dominated by bf16 rounding. ``region_errors`` returns float32.
        alpha: (B, D) non-negative dimension weights, 0 where the dimension is a tie or unlabelled.
        strength: (B, D), (B, 1) or a float — preference strength s ∈ [0, 1].
        beta: KL strength β > 0.
        gamma: margin scale γ ≥ 0.

    Returns:
        DPOLossOutput(loss, reward_accuracy, per_dimension).
    """
    return _dpo_with(_sigmoid_entries, err_policy_w, err_policy_l, err_ref_w, err_ref_l, alpha, strength, beta, gamma)


def group_dpo_hinge_loss(
    err_policy_w: torch.Tensor,
    err_policy_l: torch.Tensor,
    err_ref_w: torch.Tensor,
    err_ref_l: torch.Tensor,
    alpha: torch.Tensor,
    strength: torch.Tensor | float,
    beta: float,
    gamma: float,
) -> DPOLossOutput:
    """The group-level DPO of :func:`group_dpo_loss` with a hinge in place of the log-sigmoid (SLiC, TRL's
    ``loss_type="hinge"``): ℓ_bd = max(0, 1 + β·Δ_bd + m_bd). Same arguments, shapes and output."""
    return _dpo_with(_hinge_entries, err_policy_w, err_policy_l, err_ref_w, err_ref_l, alpha, strength, beta, gamma)


def _sigmoid_entries(delta: torch.Tensor, beta: float, margin: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(-beta * delta - margin)


def _hinge_entries(delta: torch.Tensor, beta: float, margin: torch.Tensor) -> torch.Tensor:
    return torch.relu(1.0 + beta * delta + margin)


def _dpo_with(entries, err_policy_w, err_policy_l, err_ref_w, err_ref_l, alpha, strength, beta,  # noqa: ANN001
              gamma) -> DPOLossOutput:
    _check_error_dtypes(err_policy_w=err_policy_w, err_policy_l=err_policy_l, err_ref_w=err_ref_w,
                        err_ref_l=err_ref_l)
    with _full_precision(err_policy_w):
        return _group_dpo_loss(err_policy_w, err_policy_l, err_ref_w, err_ref_l, alpha, strength, beta, gamma,
                               entries)


def _check_error_dtypes(**errors: torch.Tensor) -> None:
    for name, value in errors.items():
        if value.dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"{name} is {value.dtype}; group_dpo_loss needs float32 errors (β·Δ would be dominated by "
                f"{value.dtype} rounding). Compute them in float32, e.g. with region_errors, or cast with .float()"
            )


def _group_dpo_loss(err_policy_w: torch.Tensor, err_policy_l: torch.Tensor, err_ref_w: torch.Tensor,
                    err_ref_l: torch.Tensor, alpha: torch.Tensor, strength: torch.Tensor | float, beta: float,
                    gamma: float, entries=_sigmoid_entries) -> DPOLossOutput:  # noqa: ANN001
    shape = err_policy_w.shape
    for name, value in (("err_policy_l", err_policy_l), ("err_ref_w", err_ref_w), ("err_ref_l", err_ref_l),
                        ("alpha", alpha)):
        if value.shape != shape:
            raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)} like err_policy_w")
    if beta <= 0:
        raise ValueError(f"beta={beta} must be > 0")
    if gamma < 0:
        raise ValueError(f"gamma={gamma} must be >= 0")
    alpha = alpha.float()
    if (alpha < 0).any():
        raise ValueError("alpha has negative entries; use 0 for ties and unlabelled dimensions")
    strength = torch.as_tensor(strength, dtype=torch.float32, device=err_policy_w.device)
    strength = torch.broadcast_to(strength, shape)

    delta = (err_policy_w.float() - err_ref_w.float()) - (err_policy_l.float() - err_ref_l.float())
    margin = gamma * strength
    per_entry = entries(delta, beta, margin)  # (B, D)
    weight_sum = alpha.sum(dim=1)  # (B,)
    labelled_pairs = weight_sum > 0
    per_pair = (alpha * per_entry).sum(dim=1) / weight_sum.clamp_min(1e-12)
    if labelled_pairs.any():
        loss = per_pair[labelled_pairs].mean()
    else:  # keep the graph so that backward() works on an all-tie batch
        loss = (per_entry * 0.0).sum()

    with torch.no_grad():
        labelled = (alpha > 0).float()
        correct = (delta < 0).float() * labelled
        count = labelled.sum(dim=0)
        n = count.clamp_min(1.0)
        nan = torch.full_like(count, float("nan"))
        per_dimension = {
            "accuracy": torch.where(count > 0, correct.sum(0) / n, nan),
            "reward_margin": torch.where(count > 0, (-beta * delta * labelled).sum(0) / n, nan),
            "loss": torch.where(count > 0, (per_entry * labelled).sum(0) / n, nan),
            "count": count,
        }
        total = labelled.sum()
        reward_accuracy = correct.sum() / total if total > 0 else torch.tensor(float("nan"))
    return DPOLossOutput(loss=loss, reward_accuracy=reward_accuracy, per_dimension=per_dimension)


@dataclass(frozen=True)
class DPOLoss:
    """A group-level DPO loss of the registry: its function (the signature of :func:`group_dpo_loss`) and
    the formula it computes, as the dataset card and the config state it."""

    name: str
    function: Callable[..., DPOLossOutput]
    formula: str


#: The loss ``DPOConfig.loss_type`` names by default.
DEFAULT_DPO_LOSS = "weighted_margin"
#: The DPO losses a config can choose by name (``DPOConfig.loss_type``, like TRL's ``loss_type``).
DPO_LOSSES: dict[str, DPOLoss] = {
    "weighted_margin": DPOLoss(
        "weighted_margin", group_dpo_loss,
        "L = sum_d alpha_d * (-log sigmoid(-beta * Delta_d - m_d)) / sum_d alpha_d, with Delta_d = "
        "[e_theta(w; R_d) - e_ref(w; R_d)] - [e_theta(l; R_d) - e_ref(l; R_d)] (mean squared velocity errors "
        "over dimension d's region R_d) and margin m_d = gamma * s_d (s_d the preference strength); no 1/2 "
        "factor in front of beta."),
    "hinge": DPOLoss(
        "hinge", group_dpo_hinge_loss,
        "L = sum_d alpha_d * max(0, 1 + beta * Delta_d + m_d) / sum_d alpha_d, with Delta_d = "
        "[e_theta(w; R_d) - e_ref(w; R_d)] - [e_theta(l; R_d) - e_ref(l; R_d)] (mean squared velocity errors "
        "over dimension d's region R_d) and margin m_d = gamma * s_d (s_d the preference strength)."),
}


def dpo_loss(name: str) -> Callable[..., DPOLossOutput]:
    """The function of the registered DPO loss ``name``; ValueError naming the registered ones otherwise."""
    if name not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss {name!r}; expected one of {', '.join(DPO_LOSSES)}")
    return DPO_LOSSES[name].function
