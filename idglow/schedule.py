"""Task-adaptive timestep scheduling, as functions of the flow-matching noise level σ ∈ [0, 1].

σ = 1 is pure noise and σ = 0 the clean image (diffusers' FLUX convention). Everything here takes σ, never a
step index, so it holds for any number of steps and any resolution shift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from idglow.errors import InputError

Task = Literal["fusion", "age"]
TASKS: tuple[str, ...] = ("fusion", "age")


@dataclass(frozen=True)
class IdentityWindow:
    """The σ range in which identity is injected (temporal gating). Bad bounds raise InputError (a ValueError).

    gate(σ) is 1 inside [sigma_lo, sigma_hi] and 0 outside; with ``ramp`` > 0 it rises linearly over
    [sigma_lo − ramp, sigma_lo] and falls over [sigma_hi, sigma_hi + ramp].
    """

    sigma_lo: float = 0.0
    sigma_hi: float = 1.0
    ramp: float = 0.0

    def __post_init__(self) -> None:
        for name in ("sigma_lo", "sigma_hi"):
            value = getattr(self, name)
            if not (0.0 <= value <= 1.0):
                raise InputError(f"identity window {name}={value} is outside [0, 1]")
        if self.sigma_lo > self.sigma_hi:
            raise InputError(f"identity window sigma_lo={self.sigma_lo} is greater than sigma_hi={self.sigma_hi}")
        if not (0.0 <= self.ramp <= 1.0):
            raise InputError(f"identity window ramp={self.ramp} is outside [0, 1]")

    def gate(self, sigma: float) -> float:
        sigma = float(sigma)
        if self.sigma_lo <= sigma <= self.sigma_hi:
            return 1.0
        if self.ramp <= 0.0:
            return 0.0
        distance = self.sigma_lo - sigma if sigma < self.sigma_lo else sigma - self.sigma_hi
        value = 1.0 - distance / self.ramp
        return value if value > 1e-9 else 0.0  # round-off at the ramp's foot must not switch the gate on

    def gates(self, sigmas) -> np.ndarray:
        return np.array([self.gate(s) for s in np.asarray(sigmas, dtype=np.float64).reshape(-1)])

    @property
    def always_on(self) -> bool:
        return self.sigma_lo <= 0.0 and self.sigma_hi >= 1.0


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


def linear_decay_weight(sigma, w_clean: float = 1.0, w_noisy: float = 0.1):
    """Linear-decay identity constraint w(σ) = w_clean + (w_noisy − w_clean)·σ.

    Works on floats, numpy arrays and torch tensors alike (shape preserved). The constraint is strongest at
    the clean end and weakest at high noise, where layout and composition are decided.
    """
    return w_clean + (w_noisy - w_clean) * sigma
