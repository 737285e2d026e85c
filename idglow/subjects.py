"""A request's subjects, in slot order (slot order is identity order everywhere), and the one place where the
rules for a group (how many people, which ages and weights, what the age task needs) are written."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from idglow.errors import InputError
from idglow.schedule import TASKS

MAX_SUBJECTS = 6
AGE_OF_MAJORITY = 18  # younger than this, a person is a child: the safety checks, child nouns, "the group has an adult"
TEEN_AGE = 13  # from this age a child is a teenager; a younger target age is phrased "a child" (mini-adult checks)
MIN_AGE, MAX_AGE = 0.0, 120.0
MAX_ID_WEIGHT = 3.0
# How a visitor may ask for a person to be described, instead of the face analyzer's gender estimate: the word
# → (gender presentation, whether the word is a child's). None leaves it to the model.
DESCRIBE_AS: dict[str, tuple[str, bool]] = {
    "woman": ("female", False), "man": ("male", False), "girl": ("female", True), "boy": ("male", True),
}
# Values that mean "leave it to the model" where people type them (a CLI list, a manifest, a form).
DESCRIBE_AS_UNSET = ("", "-", "auto", "none", "model")


@dataclass(frozen=True)
class SubjectRef:
    """One person of a group request — the one record of a person from the Generate card (or a command's flags)
    through the prompt writer and the pipeline to the stored generation and the export. Checks its own values
    when built (``InputError`` naming the bad one); frozen: build a new one with ``dataclasses.replace``.

    image: a PIL image, a path, or an array (H, W, 3) uint8 RGB. target_age: the age to show this person at
    (age task; None keeps the person's own age). weight: per-person identity scale in [0, MAX_ID_WEIGHT].
    label: a name for the person. face_index: which detected face to use when the photo has several (default:
    the largest). describe_as: how the prompt names the person, one of :data:`DESCRIBE_AS` (None: the face
    analyzer's or the model's guess).
    """

    image: Any
    target_age: float | None = None
    weight: float = 1.0
    label: str | None = None
    face_index: int | None = None
    describe_as: str | None = None

    def __post_init__(self) -> None:
        name = f"{self.label}: " if self.label else ""
        if self.target_age is not None:
            age = _finite(self.target_age, f"{name}target age")
            if not MIN_AGE <= age <= MAX_AGE:
                raise InputError(f"{name}target age {self.target_age} must be between {MIN_AGE:g} and {MAX_AGE:g}")
            object.__setattr__(self, "target_age", age)
        weight = _finite(self.weight, f"{name}ID weight")
        if not 0.0 <= weight <= MAX_ID_WEIGHT:
            raise InputError(f"{name}ID weight {self.weight} must be between 0 and {MAX_ID_WEIGHT:g}")
        object.__setattr__(self, "weight", weight)
        if self.face_index is not None and (isinstance(self.face_index, bool) or int(self.face_index) != self.face_index
                                            or self.face_index < 0):
            raise InputError(f"{name}face index {self.face_index!r} must be a whole number >= 0")
        object.__setattr__(self, "describe_as", parse_describe_as(self.describe_as, name))

    @property
    def source(self) -> str | None:
        """The photo's path when the image is given as one."""
        return str(self.image) if isinstance(self.image, (str, Path)) else None

    @property
    def gender(self) -> str | None:
        """The gender presentation ``describe_as`` asks for ("female", "male"), or None (left to the model)."""
        return DESCRIBE_AS[self.describe_as][0] if self.describe_as else None

    @property
    def described_as_child(self) -> bool:
        """Whether ``describe_as`` names a child (girl, boy)."""
        return bool(self.describe_as) and DESCRIBE_AS[self.describe_as][1]

    def stored(self) -> dict[str, Any]:
        """What is stored and exported of this person, by field name: every field but the photo (stored by
        content hash) and the per-call knobs (``weight``, ``face_index``, kept in the call's parameters)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in NOT_STORED}


NOT_STORED = ("image", "weight", "face_index")


def parse_describe_as(value: Any, name: str = "") -> str | None:
    """A describe-as value as typed (any case; ``-``, ``auto`` or blank: leave it to the model) → one of
    :data:`DESCRIBE_AS` or None; ``InputError`` naming the choices otherwise."""
    text = "" if value is None else str(value).strip().lower()
    if text in DESCRIBE_AS_UNSET:
        return None
    if text not in DESCRIBE_AS:
        raise InputError(f"{name}describe as {value!r}: choose one of {', '.join(DESCRIBE_AS)}, or '-' to leave it "
                         "to the model")
    return text


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
