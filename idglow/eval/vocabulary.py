"""The words of an evaluation, shared by the runner, the report and the plot: the configurations compared,
the per-image metrics (in report order, which direction is better, their titles) and each configuration's
identity window."""

from __future__ import annotations

from typing import Any

from idglow.errors import InputError
from idglow.schedule import WINDOW_COORDINATES, IdentityWindow, window_for_task

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


#: The configurations whose window is read in a window coordinate (always_on's [0, 1] is the same in all).
WINDOWED_CONFIGS: tuple[str, ...] = ("idglow", "linear_decay")
#: Separates a configuration from its window coordinate in a run's name (``idglow@step_fraction``).
COORDINATE_MARK = "@"


def run_names(configs: tuple[str, ...], coordinates: tuple[str, ...]) -> tuple[str, ...]:
    """The runs of an evaluation: each configuration once, except that with several window coordinates each
    windowed configuration runs once per coordinate, named ``config@coordinate`` (``idglow@sigma``,
    ``idglow@step_fraction``, …)."""
    if len(coordinates) <= 1:
        return tuple(configs)
    return tuple(name for c in configs for name in
                 ([f"{c}{COORDINATE_MARK}{k}" for k in coordinates] if c in WINDOWED_CONFIGS else [c]))


def split_run(run: str, coordinates: tuple[str, ...] = ("sigma",)) -> tuple[str, str | None]:
    """(configuration, window coordinate) of a run's name; the coordinate is None for a configuration without
    a window coordinate (``base``, ``always_on``), else the one in the name or the single one given."""
    config, _, coordinate = run.partition(COORDINATE_MARK)
    if config not in CONFIGS or (coordinate and coordinate not in WINDOW_COORDINATES):
        raise InputError(f"unknown configuration {run!r}; choose from {', '.join(CONFIGS)}")
    if config not in WINDOWED_CONFIGS:
        return config, None
    return config, coordinate or coordinates[0]


def run_title(run: str) -> str:
    """A run's title in the report: its configuration's, with its window coordinate when the name has one."""
    config, _, coordinate = run.partition(COORDINATE_MARK)
    return CONFIG_TITLES[config] + (f", window in {coordinate}" if coordinate else "")


def config_window(config: str, task: str, settings: Any) -> IdentityWindow | None:
    """The identity window of a configuration or run (None: no identity), in the run's window coordinate;
    ``settings.window`` overrides the task's window for ``idglow`` and ``linear_decay``."""
    config = config.partition(COORDINATE_MARK)[0]
    if config == "base":
        return None
    if config == "always_on":
        return IdentityWindow(0.0, 1.0)
    if config in ("idglow", "linear_decay"):
        return IdentityWindow(*settings.window) if settings.window else window_for_task(task)
    raise InputError(f"unknown configuration {config!r}; choose from {', '.join(CONFIGS)}")
