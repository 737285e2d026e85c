"""The prompt writer keeps one record per person: facts known of one person, given once in that person's entry,
reach that person's description and clause, whatever the other people are given."""

from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pytest
from test_prompting_template import FakeAnalyzer, photo

from idglow.errors import InputError
from idglow.faces.base import Face
from idglow.prompting import (
    Known,
    PromptRequest,
    PromptSynthesizer,
    SeenPerson,
    build_instruction,
    parse_response,
)
from idglow.prompting.phrases import ORDINALS
from idglow.subjects import SubjectRef


class CountingAnalyzer(FakeAnalyzer):
    """One prepared face per photo index; records which photos it was asked about."""

    def __init__(self, faces: dict[int, Face]):
        super().__init__({index: [face] for index, face in faces.items()})
        self.asked = []

    def detect(self, image):
        self.asked.append(int(np.asarray(image)[0, 0, 0]))
        return super().detect(image)


class ScriptedVLM:
    """Answers every conversation with ``answer``."""

    def __init__(self, answer: str):
        self.answer = answer

    def generate(self, conversations, images):
        return [self.answer] * len(conversations)


def clause(text: str, position: int) -> str:
    """The sentence of a two-person prompt about the person at ``position``."""
    start = text.lower().index(f"the {ORDINALS[position - 1]} person from the left")
    end = text.find(". ", start)
    return text[start: end if end != -1 else len(text)]


def pair() -> list[SubjectRef]:
    return [SubjectRef(photo(0), label="Anna"), SubjectRef(photo(1), label="Gran")]


def test_facts_known_for_one_person_reach_that_persons_description_and_clause():
    plain = PromptSynthesizer().compose_batch([PromptRequest(pair())])[0]
    told = PromptSynthesizer().compose_batch(
        [PromptRequest(pair(), known=[None, Known(apparent_age=72, gender="F", position=1)])])[0]

    anna, gran = plain.persons
    assert (gran.age, gran.gender, gran.position) == (None, None, 2)  # control: nothing known without the facts
    assert "Gran" in clause(plain.text, 2) and "seventies" not in plain.text

    anna, gran = told.persons
    assert (gran.age, gran.gender, gran.position) == (72.0, "female", 1)
    assert (anna.age, anna.gender, anna.position) == (None, None, 2)  # Anna takes the place left free
    assert clause(told.text, 1) == "The first person from the left (Gran) is a woman in her seventies"
    assert "Anna" in clause(told.text, 2) and "seventies" not in clause(told.text, 2)


def test_only_people_without_known_facts_are_measured_by_the_face_analyzer():
    analyzer = CountingAnalyzer({0: Face((0, 0, 10, 10), age=34.0, gender="M"),
                                 1: Face((0, 0, 10, 10), age=9.0, gender="M")})
    subjects = [SubjectRef(photo(0)), SubjectRef(None, label="Gran")]  # Gran's photo cannot be read at all
    prompt = PromptSynthesizer(face_analyzer=analyzer).compose_batch(
        [PromptRequest(subjects, known=[None, Known(apparent_age=72, gender="female")])])[0]
    assert analyzer.asked == [0]
    assert (prompt.persons[0].age, prompt.persons[0].gender) == (34.0, "male")
    assert (prompt.persons[1].age, prompt.persons[1].gender) == (72.0, "female")
    assert [p.position for p in prompt.persons] == [1, 2]  # nobody's place fixed: slot order

    everyone = PromptSynthesizer(face_analyzer=analyzer).compose([SubjectRef(photo(0)), SubjectRef(photo(1))])
    assert analyzer.asked == [0, 0, 1] and everyone.persons[1].age == 9.0  # control: without facts, all measured


def test_a_fixed_place_overrides_the_models_and_the_known_facts_fill_what_it_left_unknown():
    answer = json.dumps({"persons": [
        {"slot": 0, "position": 1, "age": 30, "gender": "female", "hair": "a black bob"},
        {"slot": 1, "position": 2, "age": 71, "gender": None, "hair": "short grey hair"},
    ], "scene": "a quiet harbour", "interaction": "standing close together"})
    writer = PromptSynthesizer(vlm=ScriptedVLM(answer))
    proposed = writer.compose(pair())
    assert proposed.source == "vlm" and [p.position for p in proposed.persons] == [1, 2]
    assert proposed.persons[1].gender is None  # control: the model said nothing of Gran's gender

    placed = writer.compose_batch([PromptRequest(pair(), known=[None, Known(72, "female", position=1)])])[0]
    assert placed.source == "vlm"
    assert [p.position for p in placed.persons] == [2, 1]
    assert (placed.persons[1].age, placed.persons[1].gender) == (71, "female")  # the model's age, the known gender
    assert "woman in her seventies" in clause(placed.text, 1) and "short grey hair" in clause(placed.text, 1)
    assert "a black bob" in clause(placed.text, 2)


@pytest.mark.parametrize("known, message", [
    ([Known(30)], "1 entries of known facts for 2 people"),
    ([None, None, Known(30)], "3 entries of known facts for 2 people"),
    ([Known(position=1), Known(position=1)], r"fixed positions \[1, 1\] must lie in 1..2"),
    ([None, Known(position=3)], r"fixed positions \[3\] must lie in 1..2"),
    ([None, {"apparent_age": 30}], "known facts of person 2 must be a Known or None, got dict"),
])
def test_a_per_person_list_that_does_not_fit_the_group_is_refused(known, message):
    with pytest.raises(InputError, match=message):
        PromptSynthesizer().compose_batch([PromptRequest(pair(), known=known)])


def test_known_checks_its_own_values():
    assert Known("41.5", " Woman ", 2) == Known(41.5, "female", 2)
    assert Known(gender="unsure").gender is None
    for position in (0, 1.5, True):
        with pytest.raises(InputError, match="position"):
            Known(position=position)
    with pytest.raises(InputError, match="apparent age"):
        Known(float("nan"))


def test_a_seen_person_reads_the_persons_own_fields_from_the_record():
    subject = SubjectRef(None, target_age=6, label="Leo", describe_as="boy")
    seen = SeenPerson.of(subject, Known(8, "male", 2))
    assert (seen.target_age, seen.label, seen.describe_as) == (6.0, "Leo", "boy")
    assert (seen.apparent_age, seen.gender, seen.position) == (8.0, "male", 2)
    assert {f.name for f in fields(SeenPerson)} == {"subject", "apparent_age", "gender", "position"}  # no copies
    # the instruction and the answer check take the same list of people
    assert "slot 0: called 'Leo', described as a boy" in build_instruction([seen], "age", "")
    good = json.dumps({"persons": [{"slot": 0, "position": 1, "age": 6}]})
    assert parse_response(good, [seen]).persons[0].label == "Leo"
