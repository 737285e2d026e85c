"""The questions an annotator answers about a pair of candidates, declared once as data.

Everything that deals with a preference is derived from :data:`QUESTIONS`: the Annotate form (widgets and
keys), vote storage (answers keyed by question name), agreement, the export's columns and the DPO
dimensions with their image regions and default weights. Adding a question is adding one :class:`Question`.

Answers are given in terms of the comparison's candidates A and B (never screen sides): ``a``, ``b``,
``tie`` and, for the overall question, ``both_bad``. In the export and the DPO data, candidate A is image 0;
:attr:`Choice.label_0` is the label an answer gives image 0 (1, 0, 0.5 for a tie, None for no label).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from idglow.subjects import MAX_SUBJECTS

#: Image regions a DPO term can be computed over (``idglow.training.data.dpo_region_masks`` builds them):
#:   whole_image  every latent pixel
#:   faces        the union of the image's face boxes (whole image when it has none)
#:   background   everything outside the face boxes (whole image when the faces cover it all)
#:   person       person j's face in their own place in that image (per-person questions only)
Region = Literal["whole_image", "faces", "background", "person"]
REGIONS: tuple[str, ...] = ("whole_image", "faces", "background", "person")


@dataclass(frozen=True)
class Choice:
    """One answer to a question: its stored value, its label on the form, and the label it gives image 0."""

    value: str
    label: str
    label_0: float | None


@dataclass(frozen=True)
class Question:
    """One question of the Annotate form.

    name: the key of its answers in storage, export and DPO dimensions (``identity`` → ``identity_0``...).
    per_person: asked once per person of the group (answers ``{slot: value}``), else once per pair.
    region: the image region its DPO term uses; None when it is not a DPO dimension (a grade of another
        question, such as the strength of the overall choice).
    weight: the default α of its DPO term.
    grades: the name of the question whose answer this one grades (strength grades overall); it may only be
        answered when that answer is one of ``grades_values``, and its ``strengths`` map each answer to the
        preference strength s ∈ (0, 1] that DPO margins and the export's ``strength`` column use.
    keys: keyboard keys on the form, one per choice (in choice order); empty for none. A per-person question's
        keys follow the person's number key (1, 2, ...), a question with a ``prefix_key`` follows that key.
    prefix_key: the key pressed before one of ``keys`` (texture: ``y`` then ``a``); empty when ``keys`` are
        pressed alone. For a per-person question it comes before the person's number.
    export_column: the export column holding the label of image 0 (default ``{name}_label_0``, or
        ``{name}_labels_0`` per person); for a grade, the column of its strengths (default ``{name}``).
    """

    name: str
    label: str
    help: str
    choices: tuple[Choice, ...]
    per_person: bool = False
    region: Region | None = "whole_image"
    weight: float = 1.0
    required: bool = False
    grades: str | None = None
    grades_values: tuple[str, ...] = ()
    strengths: tuple[tuple[str, float], ...] = ()
    keys: tuple[str, ...] = ()
    export_column: str | None = None
    prefix_key: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"question name {self.name!r} must be an identifier (it names columns and keys)")
        if not self.choices:
            raise ValueError(f"question {self.name!r} has no choices")
        if self.region is not None and self.region not in REGIONS:
            raise ValueError(f"question {self.name!r}: region {self.region!r}; expected one of {', '.join(REGIONS)}")
        if (self.region == "person") != (self.per_person and self.region is not None):
            raise ValueError(f"question {self.name!r}: the 'person' region is for per-person questions, and a "
                             "per-person DPO question uses it")
        if self.keys and len(self.keys) != len(self.choices):
            raise ValueError(f"question {self.name!r}: {len(self.keys)} keys for {len(self.choices)} choices")
        for key in (*self.keys, self.prefix_key):
            if key and (len(key) != 1 or key != key.lower() or key.isspace()):
                raise ValueError(f"question {self.name!r}: key {key!r} must be one lower-case character")
        if len(set(self.keys)) != len(self.keys):
            raise ValueError(f"question {self.name!r}: keys {self.keys} repeat a key")
        if self.prefix_key and not self.keys:
            raise ValueError(f"question {self.name!r}: prefix_key {self.prefix_key!r} without keys to follow it")
        if self.weight < 0:
            raise ValueError(f"question {self.name!r}: weight {self.weight} must be >= 0")

    @property
    def values(self) -> tuple[str, ...]:
        """The stored values of its choices."""
        return tuple(c.value for c in self.choices)

    def choice(self, value: str) -> Choice:
        """The choice stored as ``value``; ValueError naming the valid ones otherwise."""
        for c in self.choices:
            if c.value == value:
                return c
        raise ValueError(f"invalid {self.name} answer {value!r}; expected {'|'.join(self.values)}")

    def label_0(self, value: str | None) -> float | None:
        """The label ``value`` gives image 0 (candidate A); None for no answer or no label."""
        return None if value is None else self.choice(value).label_0

    @property
    def column(self) -> str:
        """The export column of its image-0 labels."""
        if self.export_column:
            return self.export_column
        if self.grades is not None:
            return self.name
        return f"{self.name}_labels_0" if self.per_person else f"{self.name}_label_0"

    @property
    def is_dimension(self) -> bool:
        """True when the question is a DPO dimension (it has a region)."""
        return self.region is not None


PAIRWISE = (Choice("a", "A", 1.0), Choice("b", "B", 0.0), Choice("tie", "Tie", 0.5))

QUESTIONS: tuple[Question, ...] = (
    Question("overall", "Which image is better overall?",
             "The better group photo as a whole: everyone recognisable, natural, well composed.",
             PAIRWISE + (Choice("both_bad", "Both bad", None),), region="whole_image", weight=1.0, required=True,
             export_column="label_0", keys=("a", "b", "t", "x")),
    Question("strength", "How clear is the difference?", "Slight or clear; only for a choice of A or B.",
             (Choice("slight", "Slight", None), Choice("clear", "Clear", None)), region=None, grades="overall",
             grades_values=("a", "b"), strengths=(("slight", 0.5), ("clear", 1.0)), export_column="strength",
             keys=("s", "c")),
    Question("identity", "Who looks more like this person?",
             "Per person: the image whose face in that person's place keeps them best.", PAIRWISE,
             per_person=True, region="person", weight=1.0, keys=("a", "b", "t")),
    Question("texture", "Which has the better skin and texture?",
             "Natural skin, hair and detail on the people's faces.", PAIRWISE, region="faces", weight=0.5,
             keys=("a", "b", "t"), prefix_key="y"),
    Question("artifacts", "Which has fewer artifacts?",
             "Fewer broken hands, melted objects or seams around the people.", PAIRWISE, region="background",
             weight=0.5, keys=("a", "b", "t"), prefix_key="r"),
)


Questions = Sequence[Question] | None


def declared(questions: Questions = None) -> tuple[Question, ...]:
    """``questions``, or the declaration :data:`QUESTIONS` as it stands at call time (so that a test can
    substitute a copy of it)."""
    return tuple(QUESTIONS if questions is None else questions)


def by_name(questions: Questions = None) -> dict[str, Question]:
    """The questions keyed by name."""
    return {q.name: q for q in declared(questions)}


def primary(questions: Questions = None) -> Question:
    """The required per-pair question that gives the Pick-a-Pic labels (``overall``)."""
    return next(q for q in declared(questions) if q.required and not q.per_person)


def dimension_questions(questions: Questions = None) -> tuple[Question, ...]:
    """The questions that are DPO dimensions: per-pair ones in declaration order, then per-person ones."""
    dims = [q for q in declared(questions) if q.is_dimension]
    return tuple([q for q in dims if not q.per_person] + [q for q in dims if q.per_person])


@dataclass(frozen=True)
class Dimension:
    """One DPO dimension: its name, the question it comes from, its region and (per person) its slot."""

    name: str
    question: Question
    region: str
    slot: int | None = None


def dpo_dimensions(num_slots: int = MAX_SUBJECTS, questions: Questions = None) -> tuple[Dimension, ...]:
    """The DPO dimensions for ``num_slots`` people, in the layout of preference, strength and α vectors:
    every per-pair dimension, then ``{name}_{j}`` for each per-person question and slot j."""
    out: list[Dimension] = []
    for q in dimension_questions(questions):
        if q.per_person:
            out += [Dimension(f"{q.name}_{j}", q, q.region, j) for j in range(num_slots)]
        else:
            out.append(Dimension(q.name, q, q.region))
    return tuple(out)


def dimension_names(num_slots: int = MAX_SUBJECTS, questions: Questions = None) -> tuple[str, ...]:
    """The names of :func:`dpo_dimensions`."""
    return tuple(d.name for d in dpo_dimensions(num_slots, questions))


def default_weights(questions: Questions = None) -> dict[str, float]:
    """Default α per DPO question (a per-person question's α applies to each of its slots)."""
    return {q.name: q.weight for q in dimension_questions(questions)}


def weight_vector(weights: Mapping[str, float], num_slots: int = MAX_SUBJECTS,
                  questions: Questions = None) -> list[float]:
    """α in the layout of :func:`dpo_dimensions`; a question missing from ``weights`` takes its default."""
    return [float(weights.get(d.question.name, d.question.weight)) for d in dpo_dimensions(num_slots, questions)]


def export_columns(questions: Questions = None) -> dict[str, str]:
    """Question name → the export column holding its image-0 labels (for a grade: its strength)."""
    return {q.name: q.column for q in declared(questions)}


def grade_of(question: Question, questions: Questions = None) -> Question | None:
    """The question that grades ``question`` (its strength), if any."""
    return next((q for q in declared(questions) if q.grades == question.name), None)


def answer_strength(grade: Question, value: str | None) -> float | None:
    """The preference strength a grade's answer stands for (slight 0.5, clear 1.0); None for no answer."""
    return None if value is None else dict(grade.strengths)[value]
