"""Template composer, fidelity check, badcases and token limits of the prompt synthesis."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from idglow.errors import InputError, NoFaceError
from idglow.faces.base import Face
from idglow.prompting import (
    FAILURE_CONSTRAINTS,
    FAILURE_TYPES,
    Badcase,
    GroupPrompt,
    PersonDescription,
    PromptSynthesizer,
    TemplateComposer,
    TokenCounter,
    build_instruction,
    check_prompt_fidelity,
    select_badcases,
)
from idglow.prompting.phrases import ORDINALS, ages_mentioned
from idglow.subjects import SubjectRef

AGES = [6, 7, 35, 42, 71, 3]


def photo(index: int) -> np.ndarray:
    """A small distinct image per subject; the fake analyzer reads the index back from pixel (0, 0)."""
    image = np.full((24, 24, 3), 127, np.uint8)
    image[0, 0, 0] = index
    return image


class FakeAnalyzer:
    """Returns prepared faces per photo index (with age and gender, as insightface would)."""

    embedding_dim = 128

    def __init__(self, faces_by_index: dict[int, list[Face]]):
        self.faces_by_index = faces_by_index

    def detect(self, image):
        return list(self.faces_by_index.get(int(np.asarray(image)[0, 0, 0]), []))


def clause_of(text: str, position: int, num: int) -> str:
    marker = "the person" if num == 1 else f"the {ORDINALS[position - 1]} person from the left"
    start = text.lower().index(marker)
    end = text.find(". ", start)
    return text[start : end if end != -1 else len(text)]


# -- template: order, ages, phrasing -------------------------------------------------------------------------
@pytest.mark.parametrize("num", [1, 2, 3, 4, 5, 6])
def test_template_slot_order_and_target_ages(num):
    subjects = [SubjectRef(photo(i), target_age=AGES[i], label=f"P{i}") for i in range(num)]
    prompt = PromptSynthesizer().compose(subjects, task="age", scene="at the beach")

    assert prompt.source == "template" and prompt.fallback_reason is None
    assert [p.slot for p in prompt.persons] == list(range(num))
    assert [p.position for p in prompt.persons] == list(range(1, num + 1))
    text = prompt.text
    if num == 1:
        assert text.lower().count("the person") == 1
    else:
        markers = [m.group(1) for m in re.finditer(r"the (\w+) person from the left", text, re.I)]
        assert markers == list(ORDINALS[:num])  # in slot order
    for i in range(num):
        clause = clause_of(text, i + 1, num)
        assert f"(P{i})" in clause
        assert set(ages_mentioned(clause)) == {float(AGES[i])}, clause
    # The compact CLIP text lists the same people left to right.
    assert ages_mentioned(prompt.clip_text) == [float(a) for a in AGES[:num]]
    report = check_prompt_fidelity(prompt, subjects)
    assert report.ok and report.score == 1.0, report.violations


def test_template_uses_face_attributes_and_labels():
    analyzer = FakeAnalyzer({
        0: [Face((0, 0, 10, 10), age=34.0, gender="F")],
        1: [Face((0, 0, 5, 5), age=60.0, gender="M"), Face((0, 0, 20, 20), age=8.2, gender="M")],
    })
    subjects = [SubjectRef(photo(0), label="Anna"), SubjectRef(photo(1))]
    prompt = PromptSynthesizer(face_analyzer=analyzer).compose(subjects, scene="a birthday party")

    first, second = clause_of(prompt.text, 1, 2), clause_of(prompt.text, 2, 2)
    assert first == "The first person from the left (Anna) is a woman in her thirties"
    assert second == "The second person from the left is an eight-year-old boy"  # the largest face
    assert prompt.persons[0].gender == "female" and prompt.persons[1].age == pytest.approx(8.2)
    assert not prompt.persons[1].age_is_target

    subjects[1] = replace(subjects[1], face_index=0)  # an explicit face wins over the largest one
    prompt = PromptSynthesizer(face_analyzer=analyzer).compose(subjects)
    assert "is a man in his sixties" in clause_of(prompt.text, 2, 2)


def test_target_age_wins_over_apparent_age():
    analyzer = FakeAnalyzer({0: [Face((0, 0, 10, 10), age=38.0, gender="male")]})
    prompt = PromptSynthesizer(face_analyzer=analyzer).compose(
        [SubjectRef(photo(0), target_age=6)], task="age"
    )
    assert "a six-year-old boy" in prompt.text and "thirties" not in prompt.text


def test_no_face_raises_only_with_an_analyzer():
    subjects = [SubjectRef(photo(0)), SubjectRef(photo(1))]
    analyzer = FakeAnalyzer({0: [Face((0, 0, 10, 10))]})
    with pytest.raises(NoFaceError) as info:
        PromptSynthesizer(face_analyzer=analyzer).compose(subjects)
    assert info.value.slot == 1
    assert PromptSynthesizer().compose(subjects).source == "template"  # no analyzer: no face needed

    subjects[0] = replace(subjects[0], face_index=3)
    with pytest.raises(InputError, match="face_index=3"):
        PromptSynthesizer(face_analyzer=FakeAnalyzer({0: [Face((0, 0, 1, 1))], 1: [Face((0, 0, 1, 1))]})).compose(
            subjects
        )


def test_age_task_asks_for_child_proportions_not_a_small_adult():
    subjects = [SubjectRef(photo(0), target_age=6), SubjectRef(photo(1), target_age=40)]
    age_prompt = PromptSynthesizer().compose(subjects, task="age")
    child, adult = clause_of(age_prompt.text, 1, 2), clause_of(age_prompt.text, 2, 2)
    assert "child's proportions" in child and "not a small adult" in child
    assert "proportions" not in adult and "a 40-year-old person" in adult
    fusion = PromptSynthesizer().compose([SubjectRef(photo(0), target_age=30)], task="fusion")
    assert "proportions" not in fusion.text


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(task="morph"), "unknown task 'morph'"),
        (dict(task="age"), "needs a target age"),
    ],
)
def test_compose_rejects_bad_requests(kwargs, match):
    with pytest.raises(InputError, match=match):
        PromptSynthesizer().compose([SubjectRef(photo(0))], **kwargs)


def test_compose_rejects_bad_subjects():
    with pytest.raises(InputError, match="7 people given; 1 to 6 are supported"):
        PromptSynthesizer().compose([SubjectRef(photo(i)) for i in range(7)])
    with pytest.raises(InputError, match="target age -3 must be between 0 and 120"):
        PromptSynthesizer().compose([SubjectRef(photo(0), target_age=-3)])
    with pytest.raises(InputError, match="needs a target age for at least one person"):
        PromptSynthesizer().compose([SubjectRef(photo(0))], task="age")


# -- token limits ---------------------------------------------------------------------------------------------
LONG_SCENE = " ".join(["a warm golden-hour garden party with lanterns, long wooden tables and music"] * 120)


@pytest.mark.parametrize("num", [1, 6])
def test_long_scene_respects_token_limits_estimate(num):
    subjects = [SubjectRef(photo(i), target_age=AGES[i]) for i in range(num)]
    badcases = [Badcase(t, task="age") for t in FAILURE_TYPES]
    prompt = PromptSynthesizer().compose(subjects, task="age", scene=LONG_SCENE, badcases=badcases)
    counter = TokenCounter()
    assert counter(prompt.text) <= 512 and counter(prompt.clip_text) <= 77
    assert prompt.token_counts == {"t5": counter(prompt.text), "clip": counter(prompt.clip_text)}
    assert LONG_SCENE.startswith(prompt.scene) and 0 < len(prompt.scene) < len(LONG_SCENE)
    assert check_prompt_fidelity(prompt, subjects).ok  # every person survives the shortening


def test_long_scene_respects_the_pipelines_tokenizers(tiny_pipe):
    subjects = [SubjectRef(photo(i), target_age=AGES[i]) for i in range(3)]
    synthesizer = PromptSynthesizer.from_pipeline(tiny_pipe)
    clip_limit = tiny_pipe.tokenizer.model_max_length
    t5_limit = tiny_pipe.tokenizer_2.model_max_length
    assert synthesizer.composer.clip_max_tokens == min(77, clip_limit)
    assert synthesizer.composer.t5_max_tokens == min(512, t5_limit)

    prompt = synthesizer.compose(subjects, task="age", scene=LONG_SCENE)
    clip_ids = tiny_pipe.tokenizer(prompt.clip_text)["input_ids"]
    t5_ids = tiny_pipe.tokenizer_2(prompt.text)["input_ids"]
    assert len(clip_ids) <= min(77, clip_limit) and len(t5_ids) <= min(512, t5_limit)
    assert prompt.token_counts == {"t5": len(t5_ids), "clip": len(clip_ids)}
    report = check_prompt_fidelity(prompt, subjects)
    assert report.ok, report.violations


def test_measured_limits_with_a_real_bpe_tokenizer():
    """A CLIP-sized limit on a byte-level BPE tokenizer (many tokens per word) still holds."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    char_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok)  # one token per byte: the worst case
    composer = TemplateComposer(TokenCounter(char_tokenizer), TokenCounter(char_tokenizer), 77, 512)
    persons = [PersonDescription(slot=i, position=i + 1, age=AGES[i], age_is_target=True) for i in range(2)]
    rendered = composer.render(persons, "age", scene="in a park")
    assert len(char_tokenizer(rendered.text)["input_ids"]) <= 512
    assert len(char_tokenizer(rendered.clip_text)["input_ids"]) <= 77
    assert rendered.clip_text.startswith("Group photo of two")


# -- fidelity -------------------------------------------------------------------------------------------------
def described_prompt() -> tuple[GroupPrompt, list[SubjectRef]]:
    subjects = [SubjectRef(photo(0), target_age=6), SubjectRef(photo(1)), SubjectRef(photo(2), target_age=70)]
    persons = [
        PersonDescription(0, 1, 6.0, True, "female", hair="two blond braids", clothing="a yellow raincoat"),
        PersonDescription(1, 2, 35.0, False, "male", hair="a shaved head", clothing="a navy suit",
                          expression="laughing"),
        PersonDescription(2, 3, 70.0, True, "female", clothing="a red cardigan", label="Grandma"),
    ]
    rendered = TemplateComposer().render(persons, "age", scene="a rainy street")
    prompt = GroupPrompt(text=rendered.text, persons=persons, scene=rendered.scene, source="template")
    return prompt, subjects


def test_fidelity_passes_a_well_bound_prompt():
    prompt, subjects = described_prompt()
    report = check_prompt_fidelity(prompt, subjects)
    assert report.ok and report.score == 1.0
    assert report.checks == 1 + 3 + 2 + 7  # extra-person check, presence, two target ages, seven attributes


def test_fidelity_catches_an_attribute_leak():
    prompt, subjects = described_prompt()
    leaked = prompt.text.replace("wearing a navy suit", "wearing a yellow raincoat")
    report = check_prompt_fidelity(GroupPrompt(leaked, prompt.persons, prompt.scene, "template"), subjects)
    assert report.kinds() == ["attribute_leak"]
    assert report.violations[0].slot == 0 and "subject 2" in report.violations[0].message
    assert 0 < report.score < 1

    in_scene = prompt.text.replace("Scene: a rainy street", "Scene: a rainy street, everyone in navy suits")
    report = check_prompt_fidelity(GroupPrompt(in_scene, prompt.persons, prompt.scene, "template"), subjects)
    assert report.kinds() == []  # "navy suits" is not the phrase "navy suit" as a whole word
    in_scene = prompt.text.replace("Scene: a rainy street", "Scene: a rainy street, a man with a shaved head")
    report = check_prompt_fidelity(GroupPrompt(in_scene, prompt.persons, prompt.scene, "template"), subjects)
    assert report.kinds() == ["attribute_leak"] and "outside" in report.violations[0].message


def test_shared_attributes_are_not_leaks():
    prompt, subjects = described_prompt()
    prompt.persons[0].expression = "laughing"  # both people laugh: each clause holds its own attribute
    text = prompt.text.replace("a yellow raincoat", "a yellow raincoat, laughing")
    assert check_prompt_fidelity(GroupPrompt(text, prompt.persons, prompt.scene, "template"), subjects).ok


def test_fidelity_catches_a_missing_person_and_a_wrong_age():
    prompt, subjects = described_prompt()
    sentences = prompt.text.split(". ")
    without_third = ". ".join(s for s in sentences if not s.startswith("The third person"))
    report = check_prompt_fidelity(GroupPrompt(without_third, prompt.persons, prompt.scene, "template"), subjects)
    assert sorted(report.kinds()) == ["missing_person", "wrong_age"]
    assert {v.slot for v in report.violations} == {2}

    report = check_prompt_fidelity(GroupPrompt(prompt.text, prompt.persons[:2], "", "template"), subjects)
    assert "missing_person" in report.kinds()

    wrong = prompt.text.replace("six-year-old", "nine-year-old")
    report = check_prompt_fidelity(GroupPrompt(wrong, prompt.persons, prompt.scene, "template"), subjects)
    assert report.kinds() == ["wrong_age"] and "9" in report.violations[0].message


def test_fidelity_catches_duplicate_and_extra_people():
    prompt, subjects = described_prompt()
    twice = prompt.text + " The second person from the left is waving."
    report = check_prompt_fidelity(GroupPrompt(twice, prompt.persons, prompt.scene, "template"), subjects)
    assert report.kinds() == ["duplicate_person"]
    extra = prompt.text + " The fourth person from the left is a dog walker."
    report = check_prompt_fidelity(GroupPrompt(extra, prompt.persons, prompt.scene, "template"), subjects)
    assert report.kinds() == ["extra_person"]
    # Target ages can be given directly instead of subjects.
    assert check_prompt_fidelity(prompt, [6, None, 70]).ok


# -- badcases -------------------------------------------------------------------------------------------------
def test_badcase_validation():
    with pytest.raises(ValueError, match="unknown failure type 'blurry'"):
        Badcase(("blurry",))
    with pytest.raises(ValueError, match="at least one failure type"):
        Badcase(())
    bc = Badcase("wrong_age", task="age", note="looks 12", target_ages=[6, None], id=7)
    assert bc.failure_types == ("wrong_age",) and bc.has_child
    assert Badcase.from_dict(json.loads(json.dumps(bc.to_dict()))) == bc
    assert set(FAILURE_CONSTRAINTS) == set(FAILURE_TYPES)


def test_attribute_leakage_badcase_changes_instruction_and_template():
    subjects = [SubjectRef(photo(0)), SubjectRef(photo(1))]
    leak = Badcase(("attribute_leakage",), task="fusion", prompt="two friends, one in a red hat", id="b1",
                   note="the red hat went to both people")
    plain = PromptSynthesizer().compose(subjects)
    shaped = PromptSynthesizer().compose(subjects, badcases=[leak])
    sentence = FAILURE_CONSTRAINTS["attribute_leakage"].sentence
    assert sentence not in plain.text and sentence in shaped.text
    assert sentence in shaped.constraints and shaped.badcase_ids == ["b1"]

    plain_instruction = build_instruction(subjects, "fusion", "")
    instruction = build_instruction(subjects, "fusion", "", ["attribute_leakage"], [leak])
    rule = FAILURE_CONSTRAINTS["attribute_leakage"].instruction
    assert rule not in plain_instruction and rule in instruction
    assert "'two friends, one in a red hat' produced: attribute_leakage (the red hat went to both people)" in instruction


def test_wrong_age_and_mini_adult_badcases_change_template_and_instruction():
    subjects = [SubjectRef(photo(0), target_age=6), SubjectRef(photo(1), target_age=38)]
    badcases = [Badcase(("wrong_age",), task="age"), Badcase(("mini_adult",), task="age", target_ages=(5, 40))]
    plain = PromptSynthesizer().compose(subjects, task="age")
    shaped = PromptSynthesizer().compose(subjects, task="age", badcases=badcases)
    child_plain, child = clause_of(plain.text, 1, 2), clause_of(shaped.text, 1, 2)
    assert "looking exactly six years old" in child and "looking exactly" not in child_plain
    assert "clearly shorter than the adults" in child and "shorter" not in child_plain
    assert "looking exactly 38 years old" in clause_of(shaped.text, 2, 2)
    for failure in ("wrong_age", "mini_adult"):
        assert FAILURE_CONSTRAINTS[failure].sentence in shaped.text
        assert FAILURE_CONSTRAINTS[failure].sentence not in plain.text
    assert check_prompt_fidelity(shaped, subjects).ok  # the extra age phrases state the same age

    instruction = build_instruction(subjects, "age", "", ["wrong_age", "mini_adult"], badcases)
    assert FAILURE_CONSTRAINTS["mini_adult"].instruction in instruction
    assert FAILURE_CONSTRAINTS["wrong_age"].instruction in instruction
    assert "slot 0: target age 6 (a child)" in instruction


def test_mini_adult_in_fusion_adds_proportions_for_children_only():
    bc = Badcase(("mini_adult",), task="fusion")
    adults = PromptSynthesizer().compose([SubjectRef(photo(0), target_age=30)], badcases=[bc])
    assert FAILURE_CONSTRAINTS["mini_adult"].sentence not in adults.text and "proportions" not in adults.text
    kid = PromptSynthesizer().compose([SubjectRef(photo(0), target_age=4)], badcases=[bc])
    assert "the height of a young child" in kid.text


def test_select_badcases_by_task_attributes_and_bound():
    fusion_leak = Badcase(("attribute_leakage",), task="fusion", num_subjects=3, id="f-leak")
    age_leak = Badcase(("attribute_leakage",), task="age", num_subjects=2, id="a-leak")
    age_kids = Badcase(("mini_adult",), task="age", num_subjects=2, target_ages=(5, 40), id="a-mini")
    age_only = Badcase(("wrong_age",), task="fusion", id="age-types-only")
    artifact = Badcase(("artifact",), id="any-artifact")
    pool = [fusion_leak, age_leak, age_kids, age_only, artifact]

    picked = select_badcases(pool, "age", 2, [6, None], limit=3)
    assert [b.id for b in picked] == ["a-mini", "a-leak", "any-artifact"]  # other-task badcases rank lower
    # Without a target age, badcases about ages only are skipped.
    picked = select_badcases(pool, "fusion", 3, [None, None, None], limit=10)
    assert "age-types-only" not in [b.id for b in picked] and "a-mini" not in [b.id for b in picked]
    assert picked[0].id == "f-leak"
    assert select_badcases(pool, "fusion", 3, [], limit=0) == []
    many = [Badcase(("artifact",), task="fusion", id=i) for i in range(50)]
    picked = PromptSynthesizer(max_badcases=2).compose([SubjectRef(photo(0))], badcases=many)
    assert picked.badcase_ids == [0, 1]  # bounded, newest (first) first


def test_select_badcases_prefers_new_failure_types():
    same = [Badcase(("artifact",), task="fusion", id=i) for i in range(3)]
    other = Badcase(("identity_swap",), task="fusion", id="swap")
    picked = select_badcases([*same, other], "fusion", 2, [], limit=2)
    assert [b.id for b in picked] == [0, "swap"]


# -- records and imports --------------------------------------------------------------------------------------
def test_group_prompt_round_trip_and_pipeline_kwargs():
    prompt = PromptSynthesizer().compose([SubjectRef(photo(0), target_age=9, label="Mia")], task="age")
    again = GroupPrompt.from_dict(json.loads(json.dumps(prompt.to_dict())))
    assert again == prompt
    assert prompt.pipeline_kwargs() == {"prompt": prompt.clip_text, "prompt_2": prompt.text}
    with pytest.raises(ValueError, match="prompt source 'human'"):
        GroupPrompt("x", [], "", "human")


def test_import_is_cheap():
    code = (
        "import sys, idglow.prompting, idglow.commands.prompt; "
        "print(sorted(m for m in ('torch', 'transformers', 'gradio', 'sqlalchemy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_prompt_drives_the_pipeline(tiny_pipe):
    """The compact text goes to CLIP and the full text to T5, through the pipeline's own call."""
    from idglow.testing import random_embeddings

    subjects = [SubjectRef(photo(i), target_age=AGES[i]) for i in range(2)]
    prompt = PromptSynthesizer.from_pipeline(tiny_pipe).compose(subjects, task="age", scene="in a park")
    embeds = random_embeddings(2, tiny_pipe.adapter.config.id_dim).unsqueeze(0)
    kwargs = dict(subject_embeds=embeds, task="age", seed=3, num_inference_steps=1, output_type="np",
                  height=32, width=32, analyze_faces=False)
    with_prompt = tiny_pipe(**prompt.pipeline_kwargs(), **kwargs)
    other = tiny_pipe(prompt=prompt.clip_text, prompt_2="an empty room", **kwargs)
    assert with_prompt.images.shape == other.images.shape
    assert not np.allclose(with_prompt.images, other.images)  # the T5 text reaches the model
