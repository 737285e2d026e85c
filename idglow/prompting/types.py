"""The result of prompt synthesis: one prompt for a group, with a description per person."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from idglow.errors import InputError
from idglow.prompting.phrases import normalize_gender
from idglow.subjects import SubjectRef

PromptSource = Literal["vlm", "template"]
PROMPT_SOURCES: tuple[str, ...] = ("vlm", "template")


@dataclass(frozen=True)
class Known:
    """What a caller already knows of one person before the prompt is written (a training photo's recorded
    or estimated facts): used instead of asking the face analyzer, so no image needs to be read unless a
    vision-language model describes the people.

    apparent_age: the age the person looks in the photo (None: unknown). gender: gender presentation, any
    spelling :func:`~idglow.prompting.phrases.normalize_gender` reads (None: unknown). position: where the
    person stands, 1 = leftmost, when the picture fixes it (None: the model or the template places them).
    """

    apparent_age: float | None = None
    gender: str | None = None
    position: int | None = None

    def __post_init__(self) -> None:
        if self.apparent_age is not None:
            age = float(self.apparent_age)
            if not math.isfinite(age):
                raise InputError(f"apparent age {self.apparent_age!r} must be a finite number")
            object.__setattr__(self, "apparent_age", age)
        object.__setattr__(self, "gender", normalize_gender(self.gender))
        position = self.position
        if position is not None:
            if isinstance(position, bool) or int(position) != position or position < 1:
                raise InputError(f"position {position!r} must be a whole number >= 1 (1 = leftmost)")
            object.__setattr__(self, "position", int(position))


@dataclass(frozen=True)
class SeenPerson:
    """One person as the prompt writer sees them before writing: the person record plus what is known or
    was measured of them. ``target_age``, ``label`` and ``describe_as`` are read from ``subject``.

    apparent_age / gender: from the caller (:class:`Known`) or the face analyzer, None when unknown (gender
    normalised). position: where the person stands (1 = leftmost) when the picture fixes it, else None.
    """

    subject: SubjectRef
    apparent_age: float | None = None
    gender: str | None = None
    position: int | None = None

    @classmethod
    def of(cls, subject: SubjectRef, known: Known | None = None) -> SeenPerson:
        """The person ``subject`` with the facts in ``known`` (none when None)."""
        known = known or Known()
        return cls(subject, known.apparent_age, known.gender, known.position)

    @property
    def target_age(self) -> float | None:
        """The age to show the person at (None: their own age)."""
        return self.subject.target_age

    @property
    def label(self) -> str | None:
        """The user's name for the person."""
        return self.subject.label

    @property
    def describe_as(self) -> str | None:
        """The visitor's word for the person (woman, man, girl, boy), or None."""
        return self.subject.describe_as


PromptPerson = SeenPerson | SubjectRef
"""A person as the model's instruction and the check of its answer read them: target age, label, describe_as."""


@dataclass
class PersonDescription:
    """What the prompt says about one person.

    slot: the subject's slot (identity order, 0-based). position: where the person stands, 1 = leftmost.
    age: the target age when one was requested, otherwise the apparent age (None when unknown);
    ``age_is_target`` tells which. gender: gender presentation as a noun-free word ("male", "female") or None.
    hair / clothing / expression: short phrases owned by this person only. label: the user's name for the person.
    describe_as: the visitor's word for the person (woman, man, girl, boy) when they chose one; it decides
    ``gender`` over any estimate.
    """

    slot: int
    position: int
    age: float | None = None
    age_is_target: bool = False
    gender: str | None = None
    hair: str | None = None
    clothing: str | None = None
    expression: str | None = None
    label: str | None = None
    describe_as: str | None = None

    @property
    def attributes(self) -> dict[str, str]:
        """The free-text attributes of this person that must not appear in anyone else's clause."""
        out = {}
        for name in ("hair", "clothing", "expression", "label"):
            value = getattr(self, name)
            if value:
                out[name] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PersonDescription:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass
class GroupPrompt:
    """A prompt for one group request.

    text: the full prompt, within the T5 encoder's limit (FLUX's ``prompt_2``). clip_text: a compact version
    within CLIP's 77 tokens (FLUX's ``prompt``). persons: one description per subject, in slot order.
    scene: the scene as used in the prompt (possibly shortened). source: ``"vlm"`` when the vision-language
    model's answer was used, ``"template"`` otherwise; ``fallback_reason`` then says why the model's answer
    was not used (None when no model was configured). constraints: the explicit constraints added to the text
    (from the task and the badcases). badcase_ids: the badcases that shaped this prompt.
    """

    text: str
    persons: list[PersonDescription]
    scene: str
    source: str
    clip_text: str = ""
    interaction: str = ""
    constraints: list[str] = field(default_factory=list)
    badcase_ids: list[Any] = field(default_factory=list)
    fallback_reason: str | None = None
    token_counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in PROMPT_SOURCES:
            raise ValueError(f"prompt source {self.source!r} is not one of {', '.join(PROMPT_SOURCES)}")

    def pipeline_kwargs(self) -> dict[str, str]:
        """Keyword arguments for a FLUX pipeline call: the compact text for CLIP, the full text for T5."""
        return {"prompt": self.clip_text or self.text, "prompt_2": self.text}

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "clip_text": self.clip_text,
            "persons": [p.to_dict() for p in self.persons],
            "scene": self.scene,
            "interaction": self.interaction,
            "source": self.source,
            "constraints": list(self.constraints),
            "badcase_ids": list(self.badcase_ids),
            "fallback_reason": self.fallback_reason,
            "token_counts": dict(self.token_counts),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupPrompt:
        return cls(
            text=data["text"],
            persons=[PersonDescription.from_dict(p) for p in data.get("persons", [])],
            scene=data.get("scene", ""),
            source=data["source"],
            clip_text=data.get("clip_text", ""),
            interaction=data.get("interaction", ""),
            constraints=list(data.get("constraints", [])),
            badcase_ids=list(data.get("badcase_ids", [])),
            fallback_reason=data.get("fallback_reason"),
            token_counts=dict(data.get("token_counts", {})),
        )
