"""Deterministic prompt composer: one clause per person, bound by position, within the encoders' limits.

Layout of the full text (T5)::

    A group photo of three people. Scene: <scene>. Interaction: <interaction>.
    The first person from the left (Anna) is a six-year-old girl, with ..., wearing ..., smiling.
    The second person from the left is ...
    Exactly three people, each appearing once. <constraints from badcases>

Each person's clause is one sentence that starts with its position marker, so the clause of person i is
the text from its marker to the end of that sentence (see :mod:`idglow.prompting.fidelity`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from idglow.prompting.badcases import FAILURE_CONSTRAINTS
from idglow.prompting.phrases import clean_phrase, clean_text, marker, noun_phrase, number_word
from idglow.prompting.tokens import CLIP_MAX_TOKENS, T5_MAX_TOKENS, TokenCounter
from idglow.prompting.types import PersonDescription, SeenPerson
from idglow.subjects import AGE_OF_MAJORITY, DESCRIBE_AS, TEEN_AGE

logger = logging.getLogger(__name__)

MIN_SCENE_WORDS = 12  # the scene is shortened to this before constraints are dropped
_ATTRIBUTE_DROP_ORDER = ("expression", "clothing", "hair", "label")


@dataclass
class RenderedPrompt:
    """A rendered prompt: the full (T5) text, the compact (CLIP) text, and the scene, interaction and
    constraints that made it into the text."""

    text: str
    clip_text: str
    scene: str
    interaction: str
    constraints: list[str]
    token_counts: dict[str, int] = field(default_factory=dict)


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _is_child(person: PersonDescription) -> bool:
    return person.age is not None and person.age < TEEN_AGE


def _truncate_words(text: str, num_words: int) -> str:
    words = text.split()
    return " ".join(words[:num_words]).rstrip(",;:")


class TemplateComposer:
    """Writes a :class:`GroupPrompt`'s text from person descriptions, a scene and constraints.

    clip_counter / t5_counter: token counters for the CLIP (``pipe.tokenizer``) and T5 (``pipe.tokenizer_2``)
    encoders; clip_max_tokens / t5_max_tokens: their limits, special tokens included.
    """

    def __init__(
        self,
        clip_counter: TokenCounter | None = None,
        t5_counter: TokenCounter | None = None,
        clip_max_tokens: int = CLIP_MAX_TOKENS,
        t5_max_tokens: int = T5_MAX_TOKENS,
    ):
        if clip_max_tokens < 16:
            raise ValueError(f"clip_max_tokens={clip_max_tokens} is too small for a prompt (minimum 16)")
        if t5_max_tokens < 32:
            raise ValueError(f"t5_max_tokens={t5_max_tokens} is too small for a prompt (minimum 32)")
        self.clip_counter = clip_counter or TokenCounter()
        self.t5_counter = t5_counter or TokenCounter()
        self.clip_max_tokens = clip_max_tokens
        self.t5_max_tokens = t5_max_tokens

    # -- clauses -----------------------------------------------------------------------------------------
    def person_clause(
        self,
        person: PersonDescription,
        num_people: int,
        task: str,
        failure_types: Sequence[str] = (),
        group_has_adult: bool = False,
        compact: bool = False,
    ) -> str:
        """One sentence about one person, starting with the position marker.

        compact: only the marker, label, age and gender (used when the full clause does not fit).
        """
        exact = person.age_is_target
        parts = [noun_phrase(person.age, person.gender, exact=exact, word=person.describe_as)]
        if compact:
            pass
        elif _is_child(person) and exact and (task == "age" or "mini_adult" in failure_types):
            proportions = "with a real child's proportions (a large head, short arms and legs, a small frame)"
            if "mini_adult" in failure_types:
                proportions += (
                    " and a child's height, clearly shorter than the adults" if group_has_adult
                    else " and the height of a young child"
                )
            parts.append(proportions + ", not a small adult")
        if not compact and "wrong_age" in failure_types and person.age is not None and exact:
            years = int(round(person.age))
            if years >= 1:
                parts.append(f"looking exactly {number_word(years) if years < 20 else years} years old")
        hair = clean_phrase(person.hair)
        if hair:
            parts.append(hair if hair.lower().startswith("with ") else f"with {hair}")
        clothing = clean_phrase(person.clothing)
        if clothing:
            parts.append(clothing if clothing.lower().startswith("wearing ") else f"wearing {clothing}")
        expression = clean_phrase(person.expression)
        if expression:
            parts.append(expression)
        label = clean_phrase(person.label)
        if parts == ["a person"]:  # nothing is known about this person: never "X is a person"
            place = marker(person.position, num_people)
            return _sentence(f"{place} is {label}" if label else f"{place}, as in the reference photo")
        subject = marker(person.position, num_people) + (f" ({label})" if label else "")
        return _sentence(f"{subject} is " + ", ".join(parts))

    def constraint_sentences(
        self, num_people: int, failure_types: Sequence[str], has_children: bool = False
    ) -> tuple[list[str], list[str]]:
        """(base constraints that are always kept, badcase constraints in priority order)."""
        n = number_word(num_people)
        base = [f"Exactly {n} people, each appearing once."] if num_people > 1 else []
        extra = []
        for failure in failure_types:
            sentence = FAILURE_CONSTRAINTS[failure].sentence.format(n=n)
            if failure == "mini_adult" and not has_children:
                continue
            if sentence not in base and sentence not in extra:
                extra.append(sentence)
        return base, extra

    # -- whole prompt ------------------------------------------------------------------------------------
    def render(
        self,
        persons: Sequence[PersonDescription],
        task: str = "fusion",
        scene: str = "",
        interaction: str = "",
        failure_types: Sequence[str] = (),
    ) -> RenderedPrompt:
        """The full text (within the T5 limit) and the compact text (within the CLIP limit).

        When the full text is too long, the scene is shortened first (to MIN_SCENE_WORDS words), then the
        interaction and the badcase constraints are dropped, then the rest of the scene, then free-text
        attributes (expression, clothing, hair, label), then the age phrasing beyond the age itself and the
        base constraint. Positions, ages and genders go last: only an encoder too small for the bare clauses
        gets a text cut at a word boundary (logged).
        """
        if not persons:
            raise ValueError("a prompt needs at least one person")
        persons = sorted(persons, key=lambda p: p.position)
        scene = clean_text(scene).rstrip(".")
        interaction = clean_text(interaction).rstrip(".")
        has_children = any(_is_child(p) for p in persons)
        base, extra = self.constraint_sentences(len(persons), failure_types, has_children)
        writer = _FullText(self, persons, task, failure_types, scene, interaction, base, extra)
        layout = _Layout(num_extra=len(extra), people=list(persons))
        text = writer.shrink_to_fit(layout)
        used_scene = writer.scene_of(layout)
        writer.log_cuts(layout, used_scene)
        clip_text = self.render_clip(persons, used_scene)
        return RenderedPrompt(
            text=text,
            clip_text=clip_text,
            scene=used_scene,
            interaction=interaction if layout.with_interaction else "",
            constraints=[c for c in base[: layout.num_base] + extra[: layout.num_extra] if c in text],
            token_counts={"t5": self.t5_counter(text), "clip": self.clip_counter(clip_text)},
        )

    def render_clip(self, persons: Sequence[PersonDescription], scene: str = "") -> str:
        """The compact prompt for CLIP: the people left to right, then as much of the scene as fits."""
        persons = sorted(persons, key=lambda p: p.position)
        nouns = [noun_phrase(p.age, p.gender, exact=p.age_is_target, word=p.describe_as) for p in persons]
        if len(persons) == 1:
            head = f"Photo of {nouns[0]}"
        else:
            head = f"Group photo of {number_word(len(persons))} people, left to right: " + ", ".join(nouns)
        fits = lambda t: self.clip_counter(t) <= self.clip_max_tokens  # noqa: E731

        def build(k: int) -> str:
            part = _truncate_words(scene, k)
            return f"{head}. {_sentence(part)}" if part else f"{head}."

        scene_len = len(scene.split())
        if fits(build(scene_len)):
            return build(scene_len)
        if fits(build(0)):
            return build(self._longest_fit(build, 0, scene_len, fits))
        # Still too long (a tiny limit): keep as many words of the head as fit.
        words = head.split()
        k = self._longest_fit(lambda k: " ".join(words[:k]), 1, len(words), fits)
        return " ".join(words[:k])

    @staticmethod
    def _longest_fit(make, lo: int, hi: int, fits) -> int:
        """The largest k in [lo, hi] with fits(make(k)), assuming monotonicity (lo when none fits)."""
        best = lo
        while lo <= hi:
            mid = (lo + hi) // 2
            if fits(make(mid)):
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        return best


@dataclass
class _Layout:
    """What the full text holds; :meth:`_FullText.shrink_to_fit` trims it step by step."""

    num_extra: int  # how many badcase constraints are kept
    people: list[PersonDescription]
    scene_words: int | None = None  # None: the whole scene
    with_interaction: bool = True
    compact: bool = False  # clauses without free-text attributes and age phrasing
    num_base: int | None = None  # how many base constraints are kept (None: all)


@dataclass
class _FullText:
    """Writes the full (T5) text of one request for a layout, and trims the layout until the text fits."""

    composer: TemplateComposer
    persons: list[PersonDescription]
    task: str
    failure_types: Sequence[str]
    scene: str
    interaction: str
    base: list[str]
    extra: list[str]

    def __post_init__(self) -> None:
        self.group_has_adult = any(p.age is None or p.age >= AGE_OF_MAJORITY for p in self.persons)
        self.scene_len = len(self.scene.split())

    def fits(self, text: str) -> bool:
        return self.composer.t5_counter(text) <= self.composer.t5_max_tokens

    def scene_of(self, layout: _Layout) -> str:
        return self.scene if layout.scene_words is None else _truncate_words(self.scene, layout.scene_words)

    def build(self, layout: _Layout) -> str:
        num = len(self.persons)
        pieces = ["A photo of one person." if num == 1 else f"A group photo of {number_word(num)} people."]
        used_scene = self.scene_of(layout)
        if used_scene:
            pieces.append(_sentence(f"Scene: {used_scene}"))
        if layout.with_interaction and self.interaction:
            pieces.append(_sentence(f"Interaction: {self.interaction}"))
        clause = self.composer.person_clause
        args = (num, self.task, self.failure_types, self.group_has_adult, layout.compact)
        pieces += [clause(p, *args) for p in layout.people]
        pieces += self.base[: layout.num_base] + self.extra[: layout.num_extra]
        return " ".join(pieces)

    def _longest_scene(self, layout: _Layout, lo: int, hi: int) -> int:
        make = lambda k: self.build(replace(layout, scene_words=k))  # noqa: E731
        return self.composer._longest_fit(make, lo, hi, self.fits)

    def shrink_to_fit(self, layout: _Layout) -> str:
        """Trim ``layout`` in place in the order that :meth:`TemplateComposer.render` documents; returns
        the text."""
        text = self.build(layout)
        if not self.fits(text) and self.scene_len > MIN_SCENE_WORDS:
            layout.scene_words = self._longest_scene(layout, MIN_SCENE_WORDS, self.scene_len)
            text = self.build(layout)
        if not self.fits(text) and self.interaction:
            layout.with_interaction = False
            text = self.build(layout)
        while not self.fits(text) and layout.num_extra > 0:
            layout.num_extra -= 1
            text = self.build(layout)
        if not self.fits(text) and self.scene:
            layout.scene_words = self._longest_scene(layout, 0, min(self.scene_len, MIN_SCENE_WORDS))
            text = self.build(layout)
        for name in _ATTRIBUTE_DROP_ORDER:
            if self.fits(text):
                break
            layout.people = [replace(p, **{name: None}) for p in layout.people]
            text = self.build(layout)
        if not self.fits(text):
            layout.compact = True
            text = self.build(layout)
        if not self.fits(text):
            layout.num_base = 0
            text = self.build(layout)
        return text if self.fits(text) else self._cut(text)

    def _cut(self, text: str) -> str:
        """Even the bare clauses are too long for this encoder: cut at a word boundary, as the encoder itself
        would, and say so (the last people lose their clauses)."""
        words = text.split()
        k = self.composer._longest_fit(lambda k: " ".join(words[:k]), 1, len(words), self.fits)
        logger.warning(
            "the prompt for %d people needs %d tokens even in its shortest form; cut to the first %d words "
            "to fit t5_max_tokens=%d",
            len(self.persons),
            self.composer.t5_counter(text),
            k,
            self.composer.t5_max_tokens,
        )
        return " ".join(words[:k])

    def log_cuts(self, layout: _Layout, used_scene: str) -> None:
        """Warn about what was left out to fit the T5 limit."""
        limit = self.composer.t5_max_tokens
        if used_scene != self.scene:
            logger.warning(
                "scene shortened from %d to %d words to fit the T5 limit of %d tokens",
                self.scene_len,
                len(used_scene.split()),
                limit,
            )
        if layout.num_extra < len(self.extra):
            dropped = len(self.extra) - layout.num_extra
            logger.warning("dropped %d badcase constraint(s) to fit the T5 limit", dropped)
        if self.interaction and not layout.with_interaction:
            logger.warning("dropped the interaction to fit the T5 limit")


def template_persons(people: Sequence[SeenPerson]) -> list[PersonDescription]:
    """Template persons in slot order (position = slot + 1): target age when given, else apparent age;
    ``describe_as`` (the visitor's word, None where left to the model) wins over the known gender."""
    persons = []
    for slot, seen in enumerate(people):
        target = seen.target_age
        age = target if target is not None else seen.apparent_age
        person = PersonDescription(
            slot=slot,
            position=slot + 1,
            age=None if age is None else float(age),
            age_is_target=target is not None,
            gender=seen.gender,
            label=seen.label,
        )
        persons.append(apply_describe_as(person, seen.describe_as))
    return persons


def apply_describe_as(person: PersonDescription, word: str | None) -> PersonDescription:
    """``person`` described as the visitor asked (``word``: woman, man, girl or boy; None changes nothing).

    The word sets the gender. An estimated age that contradicts it (a "girl" who looks 25) gives way, so
    the prompt says "a girl", not "a woman in her twenties"; a target age keeps deciding the noun's age.
    """
    if not word:
        return person
    gender, child = DESCRIBE_AS[word]
    person.gender, person.describe_as = gender, word
    if person.age is not None and not person.age_is_target and (person.age < AGE_OF_MAJORITY) != child:
        person.age = None
    return person
