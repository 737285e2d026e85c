"""The template prompt never says "X is a person" when nothing is known about someone."""

from __future__ import annotations

from idglow.prompting.template import TemplateComposer
from idglow.prompting.types import PersonDescription


def test_a_person_with_no_known_attributes_is_named_not_called_a_person():
    composer = TemplateComposer()
    assert composer.person_clause(PersonDescription(0, position=1, label="Mum"), 2, "fusion") == (
        "The first person from the left is Mum.")
    assert composer.person_clause(PersonDescription(0, position=1), 1, "fusion") == (
        "The person, as in the reference photo.")
    described = composer.person_clause(PersonDescription(1, position=2, gender="female", label="Ann"), 2, "fusion")
    assert described == "The second person from the left (Ann) is a woman."


def test_the_whole_prompt_of_unlabelled_faces_has_no_person_is_a_person():
    persons = [PersonDescription(i, position=i + 1) for i in range(3)]
    text = TemplateComposer().render(persons, scene="a picnic", task="fusion").text
    assert "is a person" not in text and "The second person from the left, as in the reference photo." in text
