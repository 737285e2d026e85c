"""Words shared by the prompt composer and the fidelity check: position markers, ages, genders."""

from __future__ import annotations

import re

from idglow.subjects import AGE_OF_MAJORITY, TEEN_AGE

ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_WORD_TO_INT = {w: i for i, w in enumerate(_UNITS)} | {w: 20 + 10 * i for i, w in enumerate(_TENS)}
DECADES = {20: "twenties", 30: "thirties", 40: "forties", 50: "fifties", 60: "sixties", 70: "seventies",
           80: "eighties", 90: "nineties"}

SINGLE_MARKER = "the person"
MARKER_RE = re.compile(r"\bthe (" + "|".join(ORDINALS) + r") person from the left\b", re.IGNORECASE)
SINGLE_MARKER_RE = re.compile(r"\bthe person\b", re.IGNORECASE)

_NUM = (
    r"(\d{1,3}|(?:" + "|".join(_TENS) + r")(?:-(?:" + "|".join(_UNITS[1:10]) + r"))?|"
    + "|".join(sorted(_UNITS, key=len, reverse=True)) + r")"
)
AGE_RE = re.compile(
    r"\b" + _NUM + r"[- ]years?[- ]old\b"
    r"|\baged? " + _NUM + r"\b"
    r"|\b" + _NUM + r"[- ]month[- ]old\b",
    re.IGNORECASE,
)


def number_word(n: int) -> str:
    """0..99 in words ("six", "forty-two")."""
    if not 0 <= n < 100:
        return str(n)
    if n < 20:
        return _UNITS[n]
    tens, unit = divmod(n, 10)
    return _TENS[tens - 2] + (f"-{_UNITS[unit]}" if unit else "")


def parse_number(token: str) -> int | None:
    """The value of a number written in digits or words ("7", "seven", "twenty-one"), else None."""
    token = token.lower()
    if token.isdigit():
        return int(token)
    if "-" in token:
        tens, _, unit = token.partition("-")
        if tens in _WORD_TO_INT and unit in _WORD_TO_INT:
            return _WORD_TO_INT[tens] + _WORD_TO_INT[unit]
        return None
    return _WORD_TO_INT.get(token)


def marker(position: int, num_people: int) -> str:
    """How the prompt names the person at ``position`` (1 = leftmost)."""
    if num_people == 1:
        return SINGLE_MARKER
    if not 1 <= position <= len(ORDINALS):
        raise ValueError(f"position {position} is outside 1..{len(ORDINALS)}")
    return f"the {ORDINALS[position - 1]} person from the left"


def age_words(age: float) -> str:
    """An age as the prompt writes it: words below twenty ("six"), digits above ("35")."""
    years = int(round(age))
    return number_word(years) if years < 20 else str(years)


def ages_mentioned(text: str) -> list[float]:
    """Every age stated in ``text`` ("six-year-old", "6 years old", "aged 6"; months as fractions)."""
    found = []
    for match in AGE_RE.finditer(text):
        years, aged, months = match.groups()
        if months is not None:
            value = parse_number(months)
            if value is not None:
                found.append(value / 12.0)
            continue
        value = parse_number(years or aged)
        if value is not None:
            found.append(float(value))
    return found


_MALE = {"m", "male", "man", "boy", "masculine", "he", "1"}
_FEMALE = {"f", "female", "woman", "girl", "feminine", "she", "0"}


def normalize_gender(value: object) -> str | None:
    """Map a backend's or model's gender field to "male", "female" or None (unknown / not stated)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in _MALE:
        return "male"
    if text in _FEMALE:
        return "female"
    return None


def person_noun(age: float | None, gender: str | None, word: str | None = None) -> str:
    """The noun for this age and gender: baby (under 1), toddler (under 3), boy/girl/child (under 18),
    else man/woman/person. ``word``: the visitor's own word for the person (woman, man, girl, boy), used
    as the noun when no age is known."""
    if age is None and word:
        return word
    if age is not None and age < AGE_OF_MAJORITY:
        if age < 3:
            base = "toddler" if age >= 1 else "baby"
            return {"male": f"{base} boy", "female": f"{base} girl"}.get(gender or "", base)
        return {"male": "boy", "female": "girl"}.get(gender or "", "child")
    return {"male": "man", "female": "woman"}.get(gender or "", "person")


def _possessive(gender: str | None) -> str:
    return {"male": "his", "female": "her"}.get(gender or "", "their")


def noun_phrase(age: float | None, gender: str | None, exact: bool, word: str | None = None) -> str:
    """'a six-year-old boy', 'a 70-year-old woman', 'a man in his thirties', 'a person'.

    exact: state the age as a number (target ages); otherwise adults get their decade (apparent ages).
    word: the visitor's word for the person (see :func:`person_noun`).
    """
    noun = person_noun(age, gender, word)
    if age is None:
        return f"a {noun}"
    if age < 1:
        months = max(1, int(round(age * 12)))
        return f"a {number_word(months)}-month-old {noun}"
    if exact or age < 20:
        words = age_words(age)
        article = "an" if words[0] in "aeiou8" or words in ("11", "18") else "a"
        teen = "teenage " if TEEN_AGE <= round(age) < AGE_OF_MAJORITY and noun in ("boy", "girl") else ""
        return f"{article} {words}-year-old {teen}{noun}"
    decade = min(90, int(age) // 10 * 10)
    return f"a {noun} in {_possessive(gender)} {DECADES[decade]}"


_SPACE = re.compile(r"\s+")


def clean_text(text: str | None) -> str:
    """Collapse whitespace and strip."""
    return _SPACE.sub(" ", text or "").strip()


def clean_phrase(text: str | None) -> str:
    """A phrase that stays inside one clause: no sentence breaks, no trailing punctuation."""
    phrase = clean_text(text).replace(";", ",").replace(".", ",")
    return phrase.strip(" ,:")
