"""The result of prompt synthesis: one prompt for a group, with a description per person."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

PromptSource = Literal["vlm", "template"]
PROMPT_SOURCES: tuple[str, ...] = ("vlm", "template")


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
