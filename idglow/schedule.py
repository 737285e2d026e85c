"""Task-adaptive timestep scheduling, as functions of the flow-matching noise level σ ∈ [0, 1].

σ = 1 is pure noise and σ = 0 the clean image (diffusers' FLUX convention). Everything here takes σ, never a
step index, so it holds for any number of steps and any resolution shift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from idglow.errors import InputError

Task = Literal["fusion", "age"]
TASKS: tuple[str, ...] = ("fusion", "age")


PROFILES: tuple[str, ...] = ("flat", "linear")
# σ within this distance of a window edge counts as on the edge: a float32 σ of 0.6 is 0.60000002.
EDGE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class IdentityWindow:
    """The σ range in which identity is injected (temporal gating). Bad bounds raise InputError (a ValueError).

    gate(σ) is the identity strength at σ, the *inference strength profile* (not to be confused with the
    training-time identity-constraint decay w(σ), :func:`identity_constraint_weight`):

    - ``profile="flat"`` (the paper's hard window): 1 inside [sigma_lo, sigma_hi], 0 outside; with ``ramp`` > 0
      it fades linearly to 0 over [sigma_lo − ramp, sigma_lo] and [sigma_hi, sigma_hi + ramp].
    - ``profile="linear"`` (a continuous fade-out toward noise): 1 for σ ≤ sigma_lo, falling linearly to 0 at
      sigma_hi, 0 above: full identity at the clean end, none at the noisy end where layout and structure are
      decided. It is continuous everywhere, so ``ramp`` has nothing to smooth and is ignored.
    """

    sigma_lo: float = 0.0
    sigma_hi: float = 1.0
    ramp: float = 0.0
    profile: str = "flat"

    def __post_init__(self) -> None:
        for name in ("sigma_lo", "sigma_hi"):
            value = getattr(self, name)
            if not (0.0 <= value <= 1.0):
                raise InputError(f"identity window {name}={value} is outside [0, 1]")
        if self.sigma_lo > self.sigma_hi:
            raise InputError(f"identity window sigma_lo={self.sigma_lo} is greater than sigma_hi={self.sigma_hi}")
        if not (0.0 <= self.ramp <= 1.0):
            raise InputError(f"identity window ramp={self.ramp} is outside [0, 1]")
        if self.profile not in PROFILES:
            raise InputError(f"identity profile {self.profile!r} is not one of {', '.join(PROFILES)}")

    def gate(self, sigma: float) -> float:
        """Identity strength in [0, 1] at noise level σ."""
        sigma = float(sigma)
        if self.profile == "linear":
            return self._linear(sigma)
        if self.sigma_lo - EDGE_TOLERANCE <= sigma <= self.sigma_hi + EDGE_TOLERANCE:
            return 1.0
        if self.ramp <= 0.0:
            return 0.0
        edge = self.sigma_lo if sigma < self.sigma_lo else self.sigma_hi
        value = 1.0 - abs(sigma - edge) / self.ramp
        return value if value > 1e-9 else 0.0  # round-off at the ramp's foot must not switch the gate on

    def _linear(self, sigma: float) -> float:
        if sigma <= self.sigma_lo + EDGE_TOLERANCE:
            return 1.0
        if sigma >= self.sigma_hi - EDGE_TOLERANCE:
            return 0.0
        return (self.sigma_hi - sigma) / (self.sigma_hi - self.sigma_lo)

    def gates(self, sigmas) -> np.ndarray:
        """gate(σ) for each value of an array-like of σ."""
        return np.array([self.gate(s) for s in np.asarray(sigmas, dtype=np.float64).reshape(-1)])

    @property
    def always_on(self) -> bool:
        return self.sigma_lo <= 0.0 and self.sigma_hi >= 1.0 and self.profile == "flat"

    def to_dict(self) -> dict[str, float | str]:
        """The window as recorded in output parameters and sidecars."""
        return {"sigma_lo": self.sigma_lo, "sigma_hi": self.sigma_hi, "ramp": self.ramp, "profile": self.profile}


TASK_WINDOWS: dict[str, IdentityWindow] = {
    "fusion": IdentityWindow(0.0, 1.0),
    "age": IdentityWindow(0.3, 0.6),
}


def window_for_task(task: str) -> IdentityWindow:
    """The preset identity window of a task: ``fusion`` is always on, ``age`` is the window σ ∈ [0.3, 0.6]."""
    try:
        return TASK_WINDOWS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}") from None


def slot_windows(task: str, target_ages: Sequence[float | None], window: IdentityWindow | None = None,
                 profile: str | None = None) -> list[IdentityWindow]:
    """One identity window per person, the one rule that inference and training share. ``fusion``: everyone
    gets ``window`` (default: always on). ``age``: a person with a target age gets ``window`` (default: the age
    window σ ∈ [0.3, 0.6]); a person without one keeps their own age, so their identity stays on at every step
    (the fusion window). An age request that names no target age at all (bare embeddings) gives everyone the
    age window. ``profile`` overrides the profile of every window ("flat" or "linear")."""
    task_window = window or window_for_task(task)
    keep = window_for_task("fusion")
    ages = list(target_ages)
    if task == "age" and all(age is None for age in ages):
        ages = [0.0] * len(ages)
    windows = [task_window if task == "fusion" or age is not None else keep for age in ages]
    return [replace(w, profile=profile) if profile else w for w in windows]


IDENTITY_DECAYS: tuple[str, ...] = ("linear", "flat")


def identity_constraint_weight(sigma, w_clean: float = 1.0, w_noisy: float = 0.1, decay: str = "linear"):
    """Training-time identity-constraint decay w(σ) (SFT's face term; the paper's group-composition schedule).

    ``decay="linear"``: w(σ) = w_clean + (w_noisy − w_clean)·σ, strongest at the clean end and weakest at high
    noise, where layout and composition are decided. ``decay="flat"`` (the ablation): w(σ) = w_clean at every σ.
    Works on floats, numpy arrays and torch tensors alike (shape preserved). Not the inference strength profile
    (``IdentityWindow.profile``), which scales the identity injection itself.
    """
    if decay not in IDENTITY_DECAYS:
        raise InputError(f"identity_decay {decay!r} is not one of {', '.join(IDENTITY_DECAYS)}")
    if decay == "flat":
        return w_clean + 0.0 * sigma
    return w_clean + (w_noisy - w_clean) * sigma


# --- the window's coordinate ------------------------------------------------------------------------------

WINDOW_COORDINATES: tuple[str, ...] = ("sigma", "one_minus_sigma", "step_fraction")
#: FLUX.1-dev's resolution shift at 1024² (exp(max_shift = 1.15)): the schedule a step fraction refers to in
#: training, where there are no inference steps.
FLUX_1024_SHIFT = float(np.exp(1.15))


def shift_sigma(u, shift: float):
    """σ = shift·u / (1 + (shift − 1)·u): FLUX's resolution shift of an unshifted noise level u ∈ [0, 1]
    (diffusers' ``time_shift`` with shift = exp(μ)); the inverse is ``shift_sigma(σ, 1 / shift)``."""
    return shift * u / (1 + (shift - 1) * u)


def sigma_window(window: IdentityWindow, coordinate: str = "sigma", shift: float = 1.0) -> IdentityWindow:
    """``window`` read in ``coordinate``, as the σ window the gate evaluates.

    The paper's window [lo, hi] may mean noise levels σ (``"sigma"``, the default), flow times t = 1 − σ
    (``"one_minus_sigma"``: σ ∈ [1 − hi, 1 − lo]) or fractions of the denoising steps done
    (``"step_fraction"``: step i of N is inside when i/N ∈ [lo, hi]). A schedule of N steps has
    σ_i = shift_sigma(1 − i/N, shift) (FLUX: shift = exp(μ) of the image size), so the step-fraction window is
    σ ∈ [shift_sigma(1 − hi), shift_sigma(1 − lo)], which selects exactly those steps. ``ramp`` and
    ``profile`` keep their meaning in σ.
    """
    if coordinate not in WINDOW_COORDINATES:
        raise InputError(f"window coordinate {coordinate!r} is not one of {', '.join(WINDOW_COORDINATES)}")
    if shift <= 0:
        raise InputError(f"schedule shift={shift} must be > 0")
    if coordinate == "sigma":
        return window
    lo, hi = 1.0 - window.sigma_hi, 1.0 - window.sigma_lo
    if coordinate == "step_fraction":
        lo, hi = float(shift_sigma(lo, shift)), float(shift_sigma(hi, shift))
    return replace(window, sigma_lo=min(max(lo, 0.0), 1.0), sigma_hi=min(max(hi, 0.0), 1.0))


def schedule_shift(scheduler_config, image_seq_len: int) -> float:
    """The shift a FLUX flow-matching scheduler applies at ``image_seq_len`` latent tokens: exp(μ) with μ from
    diffusers' ``calculate_shift`` when the scheduler shifts dynamically, else its static ``shift``."""
    config = dict(scheduler_config)
    if not config.get("use_dynamic_shifting"):
        return float(config.get("shift", 1.0))
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = calculate_shift(image_seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                         config.get("base_shift", 0.5), config.get("max_shift", 1.15))
    return float(np.exp(mu))
