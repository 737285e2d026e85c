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

    gate(σ) is the identity strength at σ. Inside [sigma_lo, sigma_hi] it is 1 (``profile="flat"``) or, with
    ``profile="linear"``, it decays linearly from 1 at sigma_lo to 0 at sigma_hi (full identity near the clean
    end, none at the noisy edge where layout and structure are decided). Outside it is 0; with ``ramp`` > 0 it
    fades linearly from the edge's value to 0 over [sigma_lo − ramp, sigma_lo] and [sigma_hi, sigma_hi + ramp].
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
        if self.sigma_lo - EDGE_TOLERANCE <= sigma <= self.sigma_hi + EDGE_TOLERANCE:
            return self._inside(min(max(sigma, self.sigma_lo), self.sigma_hi))
        if self.ramp <= 0.0:
            return 0.0
        edge = self.sigma_lo if sigma < self.sigma_lo else self.sigma_hi
        value = self._inside(edge) * (1.0 - abs(sigma - edge) / self.ramp)
        return value if value > 1e-9 else 0.0  # round-off at the ramp's foot must not switch the gate on

    def _inside(self, sigma: float) -> float:
        if self.profile == "flat" or self.sigma_hi <= self.sigma_lo:
            return 1.0
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
    """One identity window per person. ``fusion``: everyone gets ``window`` (default: always on). ``age``: a
    person with a target age gets ``window`` (default: the age window σ ∈ [0.3, 0.6]); a person without one
    keeps their own age, so their identity stays on at every step (the fusion window). ``profile`` overrides
    the profile of every window ("flat" or "linear")."""
    task_window = window or window_for_task(task)
    keep = window_for_task("fusion")
    windows = [task_window if task == "fusion" or age is not None else keep for age in target_ages]
    return [replace(w, profile=profile) if profile else w for w in windows]


def linear_decay_weight(sigma, w_clean: float = 1.0, w_noisy: float = 0.1):
    """Linear-decay identity constraint w(σ) = w_clean + (w_noisy − w_clean)·σ.

    Works on floats, numpy arrays and torch tensors alike (shape preserved). The constraint is strongest at
    the clean end and weakest at high noise, where layout and composition are decided.
    """
    return w_clean + (w_noisy - w_clean) * sigma
