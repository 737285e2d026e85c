"""The words of an evaluation, shared by the runner, the report and the plot: the configurations compared,
the per-image metrics (in report order, which direction is better, their titles) and each configuration's
identity window."""

from __future__ import annotations

from typing import Any

from idglow.errors import InputError
from idglow.schedule import IdentityWindow, window_for_task

CONFIGS: tuple[str, ...] = ("base", "always_on", "idglow", "linear_decay")
DEFAULT_CONFIGS: tuple[str, ...] = ("base", "always_on", "idglow")
CONFIG_TITLES = {
    "base": "base FLUX (no identity)",
    "always_on": "always-on injection",
    "idglow": "IdGlow (task schedule)",
    "linear_decay": "IdGlow window, linear decay",
}
#: Per-image metrics, in report order. Higher is better unless listed in LOWER_IS_BETTER.
#: binding_accuracy / swap_rate: people whose place (the prompt's left-to-right order) holds their own face /
#: another member's face; confusion: similarity to one's own reference minus the best similarity to another
#: member's (mean over matched people; negative: the face looks more like someone else); copy_paste:
#: MultiID-Bench's copy-paste score against the case's ground-truth photo (+1 pastes the reference).
IMAGE_METRICS: tuple[str, ...] = (
    "face_sim_mean", "face_sim_worst", "binding_accuracy", "swap_rate", "confusion", "copy_paste", "missing_rate",
    "duplicate_rate", "age_error", "clip_score", "aesthetic",
)
LOWER_IS_BETTER = {"swap_rate", "copy_paste", "missing_rate", "duplicate_rate", "age_error"}
METRIC_TITLES = {
    "face_sim_mean": "FaceSim (mean person)",
    "face_sim_worst": "FaceSim (worst person)",
    "binding_accuracy": "binding accuracy",
    "swap_rate": "swap rate",
    "confusion": "identity margin (confusion)",
    "copy_paste": "copy-paste",
    "missing_rate": "missing faces",
    "duplicate_rate": "duplicate faces",
    "age_error": "age error (years)",
    "clip_score": "CLIP score",
    "aesthetic": "aesthetic",
    "prompt_fidelity": "prompt fidelity",
}


def config_window(config: str, task: str, settings: Any) -> IdentityWindow | None:
    """The identity window of a configuration (None: no identity); ``settings.window`` overrides the task's
    window for ``idglow`` and ``linear_decay``."""
    if config == "base":
        return None
    if config == "always_on":
        return IdentityWindow(0.0, 1.0)
    if config in ("idglow", "linear_decay"):
        return IdentityWindow(*settings.window) if settings.window else window_for_task(task)
    raise InputError(f"unknown configuration {config!r}; choose from {', '.join(CONFIGS)}")
