"""One person record (SubjectRef) from the Generate card and the command line through the prompt writer to the
stored GenerationSubject row and the export; "describe as" overrides the estimated gender everywhere."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select
from store_fixtures import make_store

from annotation.store import users as U
from annotation.store.candidates import (
    CandidateRecord,
    GenerationRecord,
    add_candidates,
    register_generation,
    register_model_version,
)
from annotation.store.export import export_preferences
from annotation.store.sampling import next_comparison
from annotation.store.votes import VoteRequest, record_vote
from annotation.ui.generate_handlers import LEAVE_TO_MODEL, CardValues, GenerateHandlers, Person, VisitorState
from db.models import Generation, GenerationSubject
from idglow.errors import InputError
from idglow.faces.base import Face
from idglow.prompting import PromptSynthesizer, build_instruction
from idglow.subjects import DESCRIBE_AS, SubjectRef, parse_describe_as


def photo(index: int) -> np.ndarray:
    image = np.full((24, 24, 3), 127, np.uint8)
    image[0, 0, 0] = index
    return image


class FakeAnalyzer:
    """Faces by the photo's marker pixel: every photo is a man in his seventies (a wrong estimate)."""

    def detect(self, image):
        return [Face((0.0, 0.0, 20.0, 20.0), age=72.0, gender="male")]


# -- the record -------------------------------------------------------------------------------------------------
def test_describe_as_is_checked_when_the_record_is_built_and_the_record_is_frozen():
    assert SubjectRef(photo(0), describe_as=" Woman ").describe_as == "woman"
    for unset in (None, "", "-", "auto"):
        assert SubjectRef(photo(0), describe_as=unset).describe_as is None
    with pytest.raises(InputError, match="describe as 'lady': choose one of woman, man, girl, boy"):
        SubjectRef(photo(0), label="Gran", describe_as="lady")
    ref = SubjectRef(photo(0), describe_as="girl")
    assert ref.gender == "female" and SubjectRef(photo(0), describe_as="boy").gender == "male"
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.describe_as = "boy"


def test_every_stored_person_field_is_a_column_of_the_same_name():
    """Adding a person field = a field on SubjectRef + a GenerationSubject column of that name (+ migration):
    register_generation stores ``SubjectRef.stored()`` by name, so a field without a column fails loudly."""
    columns = {c.key for c in sa_inspect(GenerationSubject).column_attrs}
    stored = set(SubjectRef(photo(0)).stored())
    assert stored == {"target_age", "label", "describe_as"}
    assert stored <= columns

    @dataclasses.dataclass(frozen=True)
    class WithPronoun(SubjectRef):
        pronoun: str | None = None

    assert "pronoun" in WithPronoun(photo(0), pronoun="they").stored()
    with pytest.raises(TypeError, match="pronoun"):
        GenerationSubject(slot=0, **WithPronoun(photo(0), pronoun="they").stored())


# -- the prompt writer ----------------------------------------------------------------------------------------
def test_template_prompt_uses_describe_as_instead_of_the_estimated_gender():
    writer = PromptSynthesizer(face_analyzer=FakeAnalyzer())
    guessed = writer.compose([SubjectRef(photo(0), label="Grandma")])
    assert "a man in his seventies" in guessed.text  # control: the analyzer's (wrong) guess reaches the prompt
    said = writer.compose([SubjectRef(photo(0), label="Grandma", describe_as="woman")])
    assert "a woman in her seventies" in said.text and " man " not in said.text
    assert said.persons[0].gender == "female" and said.persons[0].describe_as == "woman"


def test_a_child_word_beats_an_adult_estimate_but_a_target_age_keeps_the_age():
    writer = PromptSynthesizer(face_analyzer=FakeAnalyzer())
    girl = writer.compose([SubjectRef(photo(0), describe_as="girl"), SubjectRef(photo(1))])
    first = girl.text.split("The second")[0]
    assert "is a girl" in first and "seventies" not in first
    aged = writer.compose([SubjectRef(photo(0), target_age=70, describe_as="girl")], task="age")
    assert "a 70-year-old woman" in aged.text


class ScriptedVLM:
    """Answers every conversation with a valid description that calls each person male."""

    def __init__(self):
        self.instructions: list[str] = []

    def generate(self, conversations, images):
        answers = []
        for conversation in conversations:
            self.instructions.append(conversation[0]["content"][-1]["text"])
            n = sum(1 for part in conversation[0]["content"] if part["type"] == "image")
            persons = [{"slot": i, "position": i + 1, "age": 40, "gender": "male", "hair": "short hair",
                        "clothing": "a coat", "expression": "smiling"} for i in range(n)]
            answers.append(json.dumps({"persons": persons, "scene": "a park", "interaction": "side by side"}))
        return answers


def test_vlm_is_told_the_word_and_its_answer_cannot_override_it():
    vlm = ScriptedVLM()
    prompt = PromptSynthesizer(vlm=vlm).compose([SubjectRef(photo(0), describe_as="woman"), SubjectRef(photo(1))])
    assert prompt.source == "vlm"
    assert "slot 0: described as a woman" in vlm.instructions[0]
    assert "slot 1" not in vlm.instructions[0].split("Known facts:")[1].split("Example")[0]
    assert prompt.persons[0].gender == "female" and prompt.persons[1].gender == "male"
    assert "a woman in her forties" in prompt.text and "a man in his forties" in prompt.text
    plain = build_instruction([SubjectRef(None)], "fusion", "")
    assert "described as" not in plain


# -- the Generate card ----------------------------------------------------------------------------------------
class _Detected:
    def __init__(self, index):
        self.crop, self.face_index, self.source = photo(index), None, None


def test_card_values_become_the_record():
    handlers = GenerateHandlers(service=None)
    state = VisitorState(people=[Person("a", _Detected(0)), Person("b", _Detected(1))])
    cards = [CardValues("Gran", None, 1.0, "woman"), CardValues("", 6, 1.0, LEAVE_TO_MODEL)]
    subjects = handlers._subjects(state, cards)
    assert [s.describe_as for s in subjects] == ["woman", None]
    assert subjects[0].label == "Gran" and subjects[1].target_age == 6.0
    handlers._remember(state, cards)  # kept when photos are added or removed
    view = handlers.view(state)
    assert view["describe_0"] == "woman" and view["describe_1"] == LEAVE_TO_MODEL


# -- stored once, exported --------------------------------------------------------------------------------------
def test_describe_as_is_stored_on_the_person_and_exported_without_copies_in_params(tmp_path):
    store = make_store(tmp_path / "store")
    pipeline_params = {"seed": 1, "target_ages": [None, 6.0], "labels": ["Gran", None]}  # the pipeline's copies
    with store.sessions() as s:
        U.create_user(s, "ann", "annotate-pass-1", "annotator")
        register_model_version(s, "v1")
        gen = register_generation(s, GenerationRecord(
            task="fusion", final_prompt="two people", model_version="v1", params=pipeline_params,
            subjects=[SubjectRef(photo(10), label="Gran", describe_as="woman"), SubjectRef(photo(11), target_age=6)],
        ), store.data_dir)
        cands = add_candidates(s, gen.id, [CandidateRecord(photo(20), seed=1), CandidateRecord(photo(21), seed=2)],
                               store.data_dir, in_pool=True)
        rows = s.execute(select(GenerationSubject.slot, GenerationSubject.label, GenerationSubject.target_age,
                                GenerationSubject.describe_as).order_by(GenerationSubject.slot)).all()
        assert [tuple(r) for r in rows] == [(0, "Gran", None, "woman"), (1, None, 6.0, None)]
        params = s.scalar(select(Generation.params).where(Generation.id == gen.id))
        assert params == {"seed": 1}  # each person stored once, on their row
        user = s.scalar(select(U.User).where(U.User.username == "ann"))
        served = next_comparison(s, user.id, gold_rate=0.0)
        assert {served.candidate_a_id, served.candidate_b_id} == {c.id for c in cands}
        record_vote(s, VoteRequest(comparison_id=served.comparison_id, user_id=user.id, overall="a",
                                   idempotency_key="k1", answers={"strength": "clear"}))
        export_preferences(s, tmp_path / "export")
    table = pq.read_table(next((tmp_path / "export").rglob("*.parquet"))).to_pylist()
    assert len(table) == 1
    assert table[0]["subject_describe_as"] == ["woman", None]
    assert table[0]["subject_labels"] == ["Gran", None] and table[0]["target_ages"] == [None, 6.0]


def test_parse_describe_as_names_every_choice():
    assert set(DESCRIBE_AS) == {"woman", "man", "girl", "boy"}
    with pytest.raises(InputError, match="'-' to leave it to the model"):
        parse_describe_as("robot")


def test_a_person_described_as_a_child_turns_the_child_prompt_rules_on():
    from annotation.generation.safety import BlockedPromptError, PromptBlocklist
    from annotation.generation.service import _ages_for_rules

    rules = PromptBlocklist()
    rules.check(["kids in the bath"], "fusion", _ages_for_rules([SubjectRef(photo(0), describe_as="woman")]))
    with pytest.raises(BlockedPromptError, match="'bath'"):
        rules.check(["kids in the bath"], "fusion", _ages_for_rules([SubjectRef(photo(0), describe_as="girl")]))
    assert _ages_for_rules([SubjectRef(photo(0), target_age=30, describe_as="boy")]) == [30.0]
