"""The JSON answer the vision-language model must give, and its validation."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from idglow.prompting.phrases import MARKER_RE, clean_phrase, clean_text, normalize_gender
from idglow.prompting.types import PersonDescription, PromptPerson

MAX_PHRASE_CHARS = 120
MAX_SCENE_CHARS = 600

RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["persons", "scene", "interaction"],
    "properties": {
        "persons": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["slot", "position", "age", "gender", "hair", "clothing", "expression"],
                "properties": {
                    "slot": {"type": "integer", "description": "the reference photo's slot, 0-based"},
                    "position": {"type": "integer", "description": "place in the group, 1 = leftmost"},
                    "age": {"type": "number", "description": "target age if given, else apparent age"},
                    "gender": {"type": "string", "enum": ["male", "female", "unknown"]},
                    "hair": {"type": "string"},
                    "clothing": {"type": "string"},
                    "expression": {"type": "string"},
                },
            },
        },
        "scene": {"type": "string"},
        "interaction": {"type": "string"},
    },
}

EXAMPLE_RESPONSE = {
    "persons": [
        {"slot": 0, "position": 1, "age": 6, "gender": "male", "hair": "short brown hair",
         "clothing": "a yellow t-shirt", "expression": "laughing"},
        {"slot": 1, "position": 2, "age": 34, "gender": "female", "hair": "long black hair in a ponytail",
         "clothing": "a denim jacket", "expression": "smiling softly"},
    ],
    "scene": "a sunny park in spring, soft afternoon light",
    "interaction": "standing side by side, holding hands",
}


class ResponseError(ValueError):
    """A model answer that does not follow the schema; ``problems`` lists everything wrong with it."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass
class ModelAnswer:
    """A validated answer: one description per subject in slot order, the scene and the interaction."""

    persons: list[PersonDescription]
    scene: str
    interaction: str


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """The first JSON object in a model's answer (code fences and text around it are ignored)."""
    fenced = _FENCE.search(text)
    candidates = [fenced.group(1)] if fenced else []
    candidates.append(text)
    decoder = json.JSONDecoder()
    for candidate in candidates:
        start = candidate.find("{")
        while start != -1:
            try:
                value, _ = decoder.raw_decode(candidate, start)
                return value
            except json.JSONDecodeError:
                start = candidate.find("{", start + 1)
    snippet = clean_text(text)[:80]
    raise ResponseError([f"the answer contains no JSON object (starts with {snippet!r})"])


def _phrase(entry: dict, key: str, where: str, problems: list[str]) -> str | None:
    value = entry.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        problems.append(f"{where}.{key} must be a string, got {type(value).__name__}")
        return None
    if len(value) > MAX_PHRASE_CHARS:
        problems.append(f"{where}.{key} is {len(value)} characters long (at most {MAX_PHRASE_CHARS})")
        return None
    if MARKER_RE.search(value):
        problems.append(f"{where}.{key} mentions another person ({value!r}); describe this person only")
        return None
    return clean_phrase(value) or None


def _whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _slot_problem(slot: Any, num: int, where: str, seen: dict[int, PersonDescription]) -> str | None:
    """Why ``slot`` is not the slot of a subject not described yet, or None."""
    if not _whole_number(slot):
        return f"{where}.slot must be an integer, got {slot!r}"
    if not 0 <= slot < num:
        return f"{where}.slot={slot} is not a subject: there are {num} people, slots 0..{num - 1}"
    if slot in seen:
        return f"slot {slot} is described more than once"
    return None


def _position(entry: dict, num: int, where: str, problems: list[str]) -> int | None:
    """The entry's position in 1..num, or None (with a problem noted)."""
    position = entry.get("position")
    if not _whole_number(position):
        problems.append(f"{where}.position must be an integer, got {position!r}")
        return None
    if not 1 <= position <= num:
        problems.append(f"{where}.position={position} is outside 1..{num}")
        return None
    return position


def _age(
    entry: dict, target: float | None, slot: int, where: str, problems: list[str]
) -> float | int | None:
    """The entry's age (a number in [0, 120], numeric strings accepted) or None, checked against ``target``."""
    age = entry.get("age")
    if isinstance(age, str):
        try:
            age = float(age)
        except ValueError:
            pass
    number = isinstance(age, (int, float)) and not isinstance(age, bool)
    if not number or not math.isfinite(age) or not 0 <= age <= 120:
        problems.append(f"{where}.age must be a number in [0, 120], got {entry.get('age')!r}")
        age = None
    if target is not None and age is not None and abs(float(age) - float(target)) > 0.5:
        problems.append(f"{where}.age={age:g} but slot {slot} has the target age {target:g}")
    return age


def _person(
    entry: dict, slot: int, num: int, target: float | None, label: str | None, where: str, problems: list[str]
) -> PersonDescription:
    """The description of one subject's entry; the problems found are appended to ``problems``."""
    position = _position(entry, num, where, problems)
    age = _age(entry, target, slot, where, problems)
    return PersonDescription(
        slot=slot,
        position=position or 0,
        age=float(target) if target is not None else (None if age is None else float(age)),
        age_is_target=target is not None,
        gender=normalize_gender(entry.get("gender")),
        hair=_phrase(entry, "hair", where, problems),
        clothing=_phrase(entry, "clothing", where, problems),
        expression=_phrase(entry, "expression", where, problems),
        label=label,
    )


def _persons(persons_raw: list, people: Sequence[PromptPerson], problems: list[str]) -> dict[int, PersonDescription]:
    """The valid entries by slot, and every slot or position missing or used twice noted in ``problems``."""
    num = len(people)
    persons: dict[int, PersonDescription] = {}
    for i, entry in enumerate(persons_raw):
        where = f"persons[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where} must be an object")
            continue
        slot = entry.get("slot")
        problem = _slot_problem(slot, num, where, persons)
        if problem is not None:
            problems.append(problem)
            continue
        persons[slot] = _person(entry, slot, num, people[slot].target_age, people[slot].label, where, problems)
    missing = [s for s in range(num) if s not in persons]
    if missing:
        problems.append(f"missing slots {missing}: every one of the {num} people needs an entry")
    positions = sorted(p.position for p in persons.values() if p.position)
    if len(persons) == num and positions != list(range(1, num + 1)):
        problems.append(f"positions {positions} must be 1..{num}, each used once")
    return persons


def _check_group_text(
    scene: Any, interaction: Any, persons: dict[int, PersonDescription], problems: list[str]
) -> None:
    """Scene and interaction are short strings that repeat nobody's hair, clothing or expression."""
    for key, value in (("scene", scene), ("interaction", interaction)):
        if value is not None and not isinstance(value, str):
            problems.append(f"{key} must be a string, got {type(value).__name__}")
        elif value and len(value) > MAX_SCENE_CHARS:
            problems.append(f"{key} is {len(value)} characters long (at most {MAX_SCENE_CHARS})")
    for key, value in (("scene", scene), ("interaction", interaction)):
        text = clean_text(value if isinstance(value, str) else "").lower()
        for person in persons.values():
            for name in ("hair", "clothing", "expression"):
                phrase = (getattr(person, name) or "").lower()
                if phrase and phrase in text:
                    problems.append(
                        f"{key} repeats the {name} of slot {person.slot} ({phrase!r}); keep it in that person's entry"
                    )


def validate_response(data: Any, people: Sequence[PromptPerson]) -> ModelAnswer:
    """Check a decoded answer against the schema for the group ``people`` (one per slot, in slot order: a
    :class:`SeenPerson` or a :class:`SubjectRef`; their target age and label are used).

    Every slot 0..N−1 must appear once, positions must be 1..N each once, a slot with a target age must
    carry that age, ages lie in [0, 120], text fields are short strings that describe one person. Raises
    ResponseError listing every problem.
    """
    num = len(people)
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ResponseError([f"the answer must be a JSON object, got {type(data).__name__}"])
    persons_raw = data.get("persons")
    if not isinstance(persons_raw, list):
        raise ResponseError(["the answer has no 'persons' list"])
    persons = _persons(persons_raw, people, problems)
    scene = data.get("scene", "")
    interaction = data.get("interaction", "")
    _check_group_text(scene, interaction, persons, problems)
    if problems:
        raise ResponseError(problems)
    return ModelAnswer(
        persons=[persons[s] for s in range(num)],
        scene=clean_text(scene),
        interaction=clean_phrase(interaction),
    )


def parse_response(text: str, people: Sequence[PromptPerson]) -> ModelAnswer:
    """extract_json + validate_response."""
    return validate_response(extract_json(text), people)
