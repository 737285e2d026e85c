"""Flagged bad cases and the prompt constraints they turn into.

A badcase is a generated candidate that an annotator flagged with one or more failure types from a fixed
taxonomy. For a new request, the most relevant badcases (same task, similar group) are retrieved and each
failure type becomes an explicit constraint: a rule and a negative example in the vision-language model's
instruction, and a sentence (or stronger phrasing) in the template prompt.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from idglow.subjects import TEEN_AGE

FAILURE_TYPES: tuple[str, ...] = (
    "attribute_leakage",
    "identity_swap",
    "missing_person",
    "duplicate_face",
    "wrong_age",
    "mini_adult",
    "texture_mismatch",
    "artifact",
)

# Failure types that only concern requests with a target age.
AGE_FAILURE_TYPES: frozenset[str] = frozenset({"wrong_age", "mini_adult"})

# How far an apparent age may sit from its target before it suggests ``wrong_age``: face age estimators err by
# about 5 years on adults, and more in absolute terms on older faces.
AGE_TOLERANCE_YEARS = 5.0
AGE_TOLERANCE_FRACTION = 0.25


@dataclass(frozen=True)
class FailureConstraint:
    """What one failure type adds to a prompt.

    instruction: a rule for the vision-language model. sentence: a sentence appended to the prompt text
    (``{n}`` is replaced by the number of people in words).
    """

    instruction: str
    sentence: str


FAILURE_CONSTRAINTS: dict[str, FailureConstraint] = {
    "attribute_leakage": FailureConstraint(
        instruction=(
            "Bind every attribute to exactly one person: hair, clothing and expression go only in that "
            "person's own entry, never in the scene or interaction and never shared between people."
        ),
        sentence="Each person's hair, clothing and expression belong to that person alone and are not shared.",
    ),
    "identity_swap": FailureConstraint(
        instruction=(
            "Keep every person distinct and at a fixed position: describe visible traits that tell the people "
            "apart (hair color and length, clothing colors), and do not give two people the same traits."
        ),
        sentence="Every position is a different individual with their own face, in the order described.",
    ),
    "missing_person": FailureConstraint(
        instruction="All people must be fully visible: one entry per person, none hidden, cropped or merged.",
        sentence="Exactly {n} people are visible, with every face in frame and unobstructed.",
    ),
    "duplicate_face": FailureConstraint(
        instruction="The people are different individuals: never describe two of them as twins or lookalikes.",
        sentence="All {n} faces are different people; nobody appears twice.",
    ),
    "wrong_age": FailureConstraint(
        instruction=(
            "Give each person's age as a number and describe features that show that age (face, skin, "
            "hair, clothing suited to the age)."
        ),
        sentence="Everyone looks exactly their stated age.",
    ),
    "mini_adult": FailureConstraint(
        instruction=(
            "A child must have real child proportions: a large head relative to the body, short limbs, a small "
            "frame and a child's height, with clothing for a child of that age; never a shrunken adult."
        ),
        sentence="The children have the height and proportions of real children, not of small adults.",
    ),
    "texture_mismatch": FailureConstraint(
        instruction="Ask for one consistent photograph: the same lighting, color and skin texture for everyone.",
        sentence="One natural photograph with consistent lighting, color and skin texture for everyone.",
    ),
    "artifact": FailureConstraint(
        instruction="Ask for clean anatomy: natural hands, no extra fingers or limbs, no merged bodies.",
        sentence="Natural anatomy: correct hands and limbs, no merged bodies.",
    ),
}


def wrong_age_slots(apparent_ages: Sequence[float | None], target_ages: Sequence[float | None]) -> list[int]:
    """The people whose apparent age is off their target age by more than max(5 years, 25% of the target):
    the ones that suggest flagging ``wrong_age``. People without either age are never listed."""
    slots = []
    for slot, (apparent, target) in enumerate(zip(apparent_ages, target_ages)):
        if apparent is None or target is None:
            continue
        tolerance = max(AGE_TOLERANCE_YEARS, AGE_TOLERANCE_FRACTION * float(target))
        if abs(float(apparent) - float(target)) > tolerance:
            slots.append(slot)
    return slots


def _check_failure_types(values: Iterable[str]) -> tuple[str, ...]:
    out = []
    for value in values:
        if value not in FAILURE_TYPES:
            raise ValueError(f"unknown failure type {value!r}; expected one of {', '.join(FAILURE_TYPES)}")
        if value not in out:
            out.append(value)
    return tuple(out)


@dataclass(frozen=True)
class Badcase:
    """A flagged generation.

    failure_types: one or more of FAILURE_TYPES. task: the task of the request ("fusion" or "age").
    note: the annotator's note. prompt: the prompt that produced the bad candidate (shown to the model as a
    negative example). candidate_id / id: references into the store the badcase came from.
    num_subjects, target_ages: the request's group, used to find badcases similar to a new request.
    """

    failure_types: tuple[str, ...]
    task: str | None = None
    note: str = ""
    prompt: str | None = None
    candidate_id: Any = None
    num_subjects: int | None = None
    target_ages: tuple[float | None, ...] = ()
    id: Any = None

    def __post_init__(self) -> None:
        types = (self.failure_types,) if isinstance(self.failure_types, str) else self.failure_types
        types = _check_failure_types(types)
        if not types:
            raise ValueError("a badcase needs at least one failure type")
        object.__setattr__(self, "failure_types", types)
        object.__setattr__(self, "target_ages", tuple(self.target_ages or ()))
        if self.num_subjects is not None and self.num_subjects < 1:
            raise ValueError(f"badcase num_subjects={self.num_subjects} must be at least 1")

    @property
    def has_child(self) -> bool:
        return any(a is not None and a < TEEN_AGE for a in self.target_ages)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "candidate_id": self.candidate_id,
            "failure_types": list(self.failure_types),
            "task": self.task,
            "note": self.note,
            "prompt": self.prompt,
            "num_subjects": self.num_subjects,
            "target_ages": list(self.target_ages),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Badcase:
        types = data.get("failure_types")
        if types is None:
            raise ValueError(f"badcase {data.get('id')!r} has no failure_types")
        return cls(
            failure_types=tuple([types] if isinstance(types, str) else types),
            task=data.get("task"),
            note=data.get("note") or "",
            prompt=data.get("prompt"),
            candidate_id=data.get("candidate_id"),
            num_subjects=data.get("num_subjects"),
            target_ages=tuple(data.get("target_ages") or ()),
            id=data.get("id"),
        )


def relevant_failure_types(badcase: Badcase, has_target_age: bool) -> tuple[str, ...]:
    """The failure types of ``badcase`` that apply to a request (age failures need a target age)."""
    return tuple(t for t in badcase.failure_types if has_target_age or t not in AGE_FAILURE_TYPES)


def _relevance(badcase: Badcase, task: str, num_subjects: int, has_child: bool) -> float:
    score = 0.0
    if badcase.task == task:
        score += 2.0
    elif badcase.task is not None:
        score -= 1.0
    if badcase.num_subjects is not None:
        gap = abs(badcase.num_subjects - num_subjects)
        score += 1.0 if gap == 0 else 0.5 if gap == 1 else 0.0
    if has_child and badcase.has_child:
        score += 1.0
    return score


def select_badcases(
    badcases: Iterable[Badcase],
    task: str,
    num_subjects: int,
    target_ages: Sequence[float | None] = (),
    limit: int = 4,
) -> list[Badcase]:
    """The at most ``limit`` badcases most relevant to a request, most relevant first.

    Relevance: same task (+2, another task −1), same group size (+1, off by one +0.5), children on both sides
    (+1). Badcases whose failure types all concern ages are skipped for requests without a target age. Among
    equally relevant badcases, those adding a failure type not yet covered come first, then input order (pass
    the newest first).
    """
    if limit < 0:
        raise ValueError(f"badcase limit={limit} must be >= 0")
    has_target = any(a is not None for a in target_ages)
    has_child = any(a is not None and a < TEEN_AGE for a in target_ages)
    pool = []
    for order, bc in enumerate(badcases):
        if not isinstance(bc, Badcase):
            raise TypeError(f"expected a Badcase, got {type(bc).__name__}")
        types = relevant_failure_types(bc, has_target)
        if types:
            pool.append((order, bc, types, _relevance(bc, task, num_subjects, has_child)))
    chosen: list[Badcase] = []
    covered: set[str] = set()
    while pool and len(chosen) < limit:
        best = max(pool, key=lambda item: (item[3] + (0.5 if set(item[2]) - covered else 0.0), -item[0]))
        pool.remove(best)
        chosen.append(best[1])
        covered.update(best[2])
    return chosen


def failure_types_of(badcases: Iterable[Badcase], has_target_age: bool) -> list[str]:
    """The distinct relevant failure types of ``badcases``, in taxonomy order."""
    found = set()
    for bc in badcases:
        found.update(relevant_failure_types(bc, has_target_age))
    return [t for t in FAILURE_TYPES if t in found]
