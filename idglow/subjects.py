"""A request's subjects, in slot order (slot order is identity order everywhere), and the one place where the
rules for a group (how many people, which ages and weights, what the age task needs) are written."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idglow.errors import InputError
from idglow.schedule import TASKS

MAX_SUBJECTS = 6
AGE_OF_MAJORITY = 18  # younger than this, a person is a child: the safety checks, child nouns, "the group has an adult"
TEEN_AGE = 13  # from this age a child is a teenager; a younger target age is phrased "a child" (mini-adult checks)
MIN_AGE, MAX_AGE = 0.0, 120.0
MAX_ID_WEIGHT = 3.0


@dataclass
class SubjectRef:
    """One person of a group request; checks its own values when built (``InputError`` naming the bad one).

    image: a PIL image, a path, or an array (H, W, 3) uint8 RGB. target_age: the age to show this person at
    (age task; None keeps the person's own age). weight: per-person identity scale in [0, MAX_ID_WEIGHT].
    label: a name for the person. face_index: which detected face to use when the photo has several (default:
    the largest).
    """

    image: Any
    target_age: float | None = None
    weight: float = 1.0
    label: str | None = None
    face_index: int | None = None

    def __post_init__(self) -> None:
        name = f"{self.label}: " if self.label else ""
        if self.target_age is not None:
            age = _finite(self.target_age, f"{name}target age")
            if not MIN_AGE <= age <= MAX_AGE:
                raise InputError(f"{name}target age {self.target_age} must be between {MIN_AGE:g} and {MAX_AGE:g}")
            self.target_age = age
        weight = _finite(self.weight, f"{name}ID weight")
        if not 0.0 <= weight <= MAX_ID_WEIGHT:
            raise InputError(f"{name}ID weight {self.weight} must be between 0 and {MAX_ID_WEIGHT:g}")
        self.weight = weight
        if self.face_index is not None and (isinstance(self.face_index, bool) or int(self.face_index) != self.face_index
                                            or self.face_index < 0):
            raise InputError(f"{name}face index {self.face_index!r} must be a whole number >= 0")

    @property
    def source(self) -> str | None:
        return str(self.image) if isinstance(self.image, (str, Path)) else None


def _finite(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} {value!r} is not a number") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise InputError(f"{what} {value!r} is not a finite number")
    return number


def validate_task(task: str) -> str:
    """``task`` if it is one of :data:`TASKS`; else ``InputError`` naming it."""
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return task


def validate_group(subjects: Sequence[Any], task: str, *, allow_empty: bool = False) -> None:
    """The rules of a group request, checked in one place for the pipeline, the CLI, the app and eval manifests.

    ``subjects`` are :class:`SubjectRef` (or anything with ``target_age``): 1 to :data:`MAX_SUBJECTS` of them
    (0 with ``allow_empty``, e.g. a base-model call). Task ``age`` needs at least one target age; a person
    without one keeps their own age.
    """
    validate_task(task)
    n = len(subjects)
    if n > MAX_SUBJECTS or (n == 0 and not allow_empty):
        raise InputError(f"{n} people given; 1 to {MAX_SUBJECTS} are supported")
    if task == "age" and n and all(s.target_age is None for s in subjects):
        raise InputError("age transformation needs a target age for at least one person "
                         "(leave it blank for people who keep their age)")
