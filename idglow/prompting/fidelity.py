"""Prompt fidelity: does a prompt name every person once, at the right age, with attributes bound to them?

The check reads the prompt text itself (not only the structured persons), so a text edited by hand or
rewritten by a model is judged on what it says. A person's clause is the sentence that starts with their
position marker ("the second person from the left", or "the person" for a single subject).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from idglow.prompting.phrases import (
    MARKER_RE,
    ORDINALS,
    SINGLE_MARKER_RE,
    age_words,
    ages_mentioned,
    clean_text,
)
from idglow.prompting.types import GroupPrompt, PersonDescription

VIOLATION_KINDS = ("missing_person", "duplicate_person", "extra_person", "wrong_age", "attribute_leak")


@dataclass(frozen=True)
class FidelityViolation:
    """One failed check: its kind (one of VIOLATION_KINDS), the subject's slot (None for the whole prompt)."""

    kind: str
    slot: int | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "slot": self.slot, "message": self.message}


@dataclass
class FidelityReport:
    """score: the fraction of checks passed, in [0, 1]. checks: how many checks were made."""

    score: float
    violations: list[FidelityViolation] = field(default_factory=list)
    checks: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def kinds(self) -> list[str]:
        return [v.kind for v in self.violations]

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "checks": self.checks, "violations": [v.to_dict() for v in self.violations]}


def _sentence_end(text: str, start: int) -> int:
    match = re.compile(r"\.(\s|$)").search(text, start)
    return match.start() + 1 if match else len(text)


def _clauses(text: str, num_people: int) -> tuple[dict[int, list[tuple[int, int]]], list[tuple[int, int]]]:
    """Marker occurrences → {position: [(start, end), ...]} and the spans of every clause."""
    found: dict[int, list[tuple[int, int]]] = {}
    if num_people == 1:
        matches = [(1, m.start()) for m in SINGLE_MARKER_RE.finditer(text)]
        # A single-person prompt may still use ordinal markers; count those as well.
        matches += [(ORDINALS.index(m.group(1).lower()) + 1, m.start()) for m in MARKER_RE.finditer(text)]
    else:
        matches = [(ORDINALS.index(m.group(1).lower()) + 1, m.start()) for m in MARKER_RE.finditer(text)]
    matches.sort(key=lambda item: item[1])
    spans = []
    for i, (position, start) in enumerate(matches):
        end = _sentence_end(text, start)
        if i + 1 < len(matches):
            end = min(end, matches[i + 1][1])
        found.setdefault(position, []).append((start, end))
        spans.append((start, end))
    return found, spans


def _contains(haystack: str, phrase: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", haystack) is not None


_ARTICLE = re.compile(r"^(a|an|the|with|wearing)\s+")


def _norm(text: str) -> str:
    """Lower case, no surrounding punctuation, no leading article ("a green dress" → "green dress")."""
    return _ARTICLE.sub("", clean_text(text).lower().strip(" ,.;:"))


_Checked = tuple[list[FidelityViolation], int]  # the violations found and the number of checks made


def _extra_people(
    prompt: GroupPrompt, num: int, markers: dict[int, list[tuple[int, int]]]
) -> tuple[dict[int, PersonDescription], FidelityViolation | None]:
    """The described persons by slot (first description wins) and an ``extra_person`` violation if a person
    or a marker goes beyond the ``num`` subjects."""
    by_slot: dict[int, PersonDescription] = {}
    extra_slots = []
    for person in prompt.persons:
        if not 0 <= person.slot < num:
            extra_slots.append(person.slot)
        else:
            by_slot.setdefault(person.slot, person)
    extra_positions = sorted(p for p in markers if p > num)
    if not (extra_slots or extra_positions):
        return by_slot, None
    detail = []
    if extra_slots:
        detail.append(f"persons with slots {extra_slots} beyond the {num} subjects")
    if extra_positions:
        detail.append(f"markers for positions {extra_positions} beyond {num} people")
    return by_slot, FidelityViolation("extra_person", None, "; ".join(detail))


def _presence(
    by_slot: dict[int, PersonDescription], num: int, markers: dict[int, list[tuple[int, int]]]
) -> tuple[list[FidelityViolation], dict[int, tuple[int, int]]]:
    """``missing_person`` / ``duplicate_person`` violations and the clause span of every slot mentioned."""
    violations: list[FidelityViolation] = []
    clause_of: dict[int, tuple[int, int]] = {}
    for slot in range(num):
        person = by_slot.get(slot)
        if person is None:
            violations.append(FidelityViolation("missing_person", slot, f"no description of subject {slot + 1}"))
            continue
        where = f"subject {slot + 1} (position {person.position})"
        occurrences = markers.get(person.position, [])
        if not occurrences:
            violations.append(FidelityViolation("missing_person", slot, f"{where} is not mentioned in the text"))
            continue
        if len(occurrences) > 1:
            message = f"{where} is mentioned {len(occurrences)} times"
            violations.append(FidelityViolation("duplicate_person", slot, message))
        clause_of[slot] = occurrences[0]
    return violations, clause_of


def _age_checks(text: str, target_ages: list[Any], clause_of: dict[int, tuple[int, int]]) -> _Checked:
    """``wrong_age`` violations: a slot with a target age states that age, and no other, in its clause."""
    violations: list[FidelityViolation] = []
    checks = 0
    for slot, target in enumerate(target_ages):
        if target is None:
            continue
        checks += 1
        if slot not in clause_of:
            message = f"target age {age_words(target)} of subject {slot + 1} is not stated"
            violations.append(FidelityViolation("wrong_age", slot, message))
            continue
        start, end = clause_of[slot]
        ages = ages_mentioned(text[start:end])
        wanted = round(float(target)) if target >= 1 else round(float(target) * 12) / 12
        if not any(abs(a - wanted) < 1e-6 for a in ages) or any(abs(a - wanted) > 1e-6 for a in ages):
            said = ", ".join(f"{a:g}" for a in ages) or "none"
            message = f"subject {slot + 1} should be {wanted:g} years old; its clause states: {said}"
            violations.append(FidelityViolation("wrong_age", slot, message))
    return violations, checks


@dataclass
class _Clauses:
    """The lower-cased text, every clause's span with the slot it belongs to, and the text outside clauses."""

    lowered: str
    spans: list[tuple[int, int]]
    owner: dict[tuple[int, int], int]
    own_phrases: dict[int, set[str]]  # slot -> that person's normalized attributes
    outside: str

    def leaks(self, slot: int, phrase: str) -> list[str]:
        """Where ``phrase`` of ``slot`` appears outside that person's clause, unless its owner has it too."""
        found = []
        for span in self.spans:
            owner = self.owner.get(span)
            if owner == slot:
                continue
            theirs = self.own_phrases.get(owner, ()) if owner is not None else ()
            if any(phrase in own or own in phrase for own in theirs):
                continue  # the other person has this attribute too
            if _contains(self.lowered[span[0] : span[1]], phrase):
                found.append(f"the clause of subject {owner + 1}" if owner is not None else "another clause")
        if _contains(self.outside, phrase):
            found.append("the text outside the person clauses")
        return found


def _leak_checks(
    text: str,
    by_slot: dict[int, PersonDescription],
    spans: list[tuple[int, int]],
    clause_of: dict[int, tuple[int, int]],
) -> _Checked:
    """``attribute_leak`` violations: person i's phrases must not appear outside clause i (except as someone's
    own)."""
    lowered = text.lower()
    outside = lowered
    for start, end in spans:
        outside = outside[:start] + " " * (end - start) + outside[end:]
    own_phrases = {slot: {_norm(v) for v in p.attributes.values() if _norm(v)} for slot, p in by_slot.items()}
    clauses = _Clauses(lowered, spans, {span: slot for slot, span in clause_of.items()}, own_phrases, outside)
    violations: list[FidelityViolation] = []
    checks = 0
    for slot, person in sorted(by_slot.items()):
        for name, value in person.attributes.items():
            phrase = _norm(value)
            if not phrase:
                continue
            checks += 1
            leaks = clauses.leaks(slot, phrase)
            if leaks:
                message = f"{name} {value!r} of subject {slot + 1} also appears in " + " and ".join(leaks)
                violations.append(FidelityViolation("attribute_leak", slot, message))
    return violations, checks


def check_prompt_fidelity(prompt: GroupPrompt, subjects: Sequence[Any]) -> FidelityReport:
    """Check that ``prompt`` names every subject once, with its target age, and binds attributes to people.

    subjects: the request's subjects in slot order (``SubjectRef``; only ``target_age`` is read) or, for
    convenience, a list of target ages. Checks, each counted once:

    - every slot has a person in ``prompt.persons`` whose position marker occurs exactly once in the text
      (``missing_person`` / ``duplicate_person``);
    - no person or marker beyond the number of subjects (``extra_person``);
    - a slot with a target age states that age in its own clause and no other age (``wrong_age``);
    - every free-text attribute of person i (hair, clothing, expression, label) appears nowhere in the text
      outside person i's clause, unless it is also an attribute of the person whose clause it appears in
      (``attribute_leak``).

    Pure function: reads its inputs only.
    """
    target_ages = [s if s is None or isinstance(s, (int, float)) else getattr(s, "target_age", None) for s in subjects]
    num = len(target_ages)
    markers, spans = _clauses(prompt.text, num)
    by_slot, extra = _extra_people(prompt, num, markers)
    violations = [extra] if extra is not None else []
    presence, clause_of = _presence(by_slot, num, markers)
    violations += presence
    checks = 1 + num  # the extra-person check and one presence check per slot
    for found, made in (
        _age_checks(prompt.text, target_ages, clause_of),
        _leak_checks(prompt.text, by_slot, spans, clause_of),
    ):
        violations += found
        checks += made
    failed = len({(v.kind, v.slot, v.message) for v in violations})
    score = max(0.0, 1.0 - failed / checks) if checks else 1.0
    return FidelityReport(score=round(score, 4), violations=violations, checks=checks)
