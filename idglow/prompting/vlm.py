"""Vision-language model backends: the instruction, the conversation and a transformers implementation.

A backend answers a batch of chat conversations (Hugging Face chat format, ``{"type": "image"}``
placeholders in the content) with one text per conversation. :class:`TransformersVLM` loads any
``AutoModelForImageTextToText`` checkpoint with its ``AutoProcessor`` and chat template from a local folder.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from idglow.errors import IdGlowError, ModelFolderError
from idglow.prompting.badcases import FAILURE_CONSTRAINTS, Badcase
from idglow.prompting.phrases import clean_text
from idglow.prompting.schema import EXAMPLE_RESPONSE, RESPONSE_SCHEMA
from idglow.prompting.types import PromptPerson
from idglow.subjects import DESCRIBE_AS, TEEN_AGE

logger = logging.getLogger(__name__)

Conversation = list[dict[str, Any]]
DEFAULT_MAX_NEW_TOKENS = 768
MAX_NEW_TOKENS_LIMIT = 4096
NEGATIVE_EXAMPLE_CHARS = 300


class VLMLoadError(IdGlowError):
    """A vision-language model folder that exists but cannot be loaded."""


@runtime_checkable
class VLMBackend(Protocol):
    """Anything that answers chat conversations about images."""

    def generate(self, conversations: Sequence[Conversation], images: Sequence[Sequence[Any]]) -> list[str]:
        """One answer per conversation; ``images[i]`` fills the image placeholders of conversation i in order."""
        ...


# -- instruction ------------------------------------------------------------------------------------------
def _request_lines(num: int, task: str, scene: str) -> list[str]:
    """What the model is asked to do: describe the group, keep the user's scene, and age people if asked."""
    lines = [
        f"The {num} photo(s) above show the people of one group, one reference photo per person, in slot "
        f"order (slot 0 is the first photo). Write the description an image generator needs to compose "
        f"ONE natural photo with all {num} people together.",
    ]
    if scene:
        lines.append(f"The user asks for this scene: {clean_text(scene)!r}. Keep its meaning in 'scene'.")
    else:
        lines.append("The user gave no scene: choose a simple, natural one.")
    if task == "age":
        lines.append(
            "This is an age transformation: each person with a target age must be shown at that age, keeping "
            "the identity cues that survive aging (face shape, eye and hair color). Describe clothing and hair "
            "suited to the target age, not to the age in the photo."
        )
    return lines


def _rules(num: int, failure_types: Sequence[str]) -> list[str]:
    """The numbered rules: the schema, one entry per slot and position, and the badcase constraints."""
    rules = [
        f"Answer with one JSON object and nothing else, following this JSON schema: "
        f"{json.dumps(RESPONSE_SCHEMA, separators=(',', ':'))}",
        f"Give exactly {num} entries in 'persons', one per slot 0..{num - 1}, each slot once.",
        f"'position' is where the person stands, 1 = leftmost; use every position 1..{num} once.",
        "'age' is the target age when one is given below, otherwise the apparent age in the photo.",
        "'hair', 'clothing' and 'expression' are short phrases about that person only; never mention "
        "another person in them.",
        "'scene' describes the place and light; 'interaction' how the people relate (pose, touch, gaze) "
        "without repeating anyone's hair, clothing or expression.",
    ]
    rules += [FAILURE_CONSTRAINTS[failure].instruction for failure in failure_types]
    return ["Rules:"] + [f"{i + 1}. {rule}" for i, rule in enumerate(rules)]


def _known_facts(people: Sequence[PromptPerson]) -> list[str]:
    """One line per slot with a name, the word to describe the person with, or a target age (none when
    nothing is known)."""
    facts = []
    for slot, person in enumerate(people):
        bits = []
        if person.label:
            bits.append(f"called {clean_text(person.label)!r}")
        word = person.describe_as
        if word:
            bits.append(f"described as a {word} (gender '{DESCRIBE_AS[word][0]}', whatever the photo suggests)")
        age = person.target_age
        if age is not None:
            kind = " (a child)" if age < TEEN_AGE else ""
            bits.append(f"target age {age:g}{kind}")
        if bits:
            facts.append(f"- slot {slot}: " + ", ".join(bits))
    return ["Known facts:"] + facts if facts else []


def _negative_examples(badcases: Sequence[Badcase]) -> list[str]:
    """The flagged mistakes to avoid, with the prompt that made each when known (none without badcases)."""
    examples = []
    for bc in badcases:
        types = ", ".join(bc.failure_types)
        note = f" ({clean_text(bc.note)[:NEGATIVE_EXAMPLE_CHARS]})" if bc.note else ""
        if bc.prompt:
            shown = clean_text(bc.prompt)[:NEGATIVE_EXAMPLE_CHARS]
            examples.append(f"- The prompt {shown!r} produced: {types}{note}.")
        else:
            examples.append(f"- A past result showed: {types}{note}.")
    return ["Mistakes flagged on earlier results; do not repeat them:"] + examples if examples else []


def build_instruction(
    people: Sequence[PromptPerson],
    task: str,
    scene: str,
    failure_types: Sequence[str] = (),
    badcases: Sequence[Badcase] = (),
) -> str:
    """The text that follows the reference photos: the task, the schema, the rules and the constraints.
    people: one per slot, in slot order (a :class:`SeenPerson` or a :class:`SubjectRef`): their target age,
    label and ``describe_as`` become the known facts."""
    num = len(people)
    lines = _request_lines(num, task, scene)
    lines += _rules(num, failure_types)
    lines += _known_facts(people)
    lines += _negative_examples(badcases)
    lines.append(f"Example of the format (for two people): {json.dumps(EXAMPLE_RESPONSE)}")
    return "\n".join(lines)


def build_conversation(
    people: Sequence[PromptPerson],
    task: str,
    scene: str,
    failure_types: Sequence[str] = (),
    badcases: Sequence[Badcase] = (),
) -> Conversation:
    """One user turn: each reference photo preceded by its slot, then the instruction (see
    :func:`build_instruction`)."""
    content: list[dict[str, Any]] = []
    for slot in range(len(people)):
        content.append({"type": "text", "text": f"Photo of slot {slot}:"})
        content.append({"type": "image"})
    content.append({"type": "text", "text": build_instruction(people, task, scene, failure_types, badcases)})
    return [{"role": "user", "content": content}]


def repair_conversation(conversation: Conversation, answer: str, problems: Sequence[str]) -> Conversation:
    """The conversation continued with the model's invalid answer and a request to fix it."""
    listed = "\n".join(f"- {p}" for p in problems)
    return [
        *conversation,
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": f"That answer is not valid:\n{listed}\nReply with the corrected JSON object only.",
                }
            ],
        },
    ]


# -- transformers backend ---------------------------------------------------------------------------------
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


class TransformersVLM:
    """A transformers image-text-to-text model answering with greedy decoding.

    Use :meth:`from_pretrained` to load a local folder. Conversations are processed ``batch_size`` at a time
    (left padding) and each answer is at most ``max_new_tokens`` tokens. Reference photos are shrunk so their
    longer side is at most ``max_image_side`` pixels before the processor sees them.

    Architectures: the code only uses the generic ``AutoProcessor`` / ``AutoModelForImageTextToText`` /
    chat-template API. The test suite runs it on a tiny random LLaVA (CLIP vision tower + Llama decoder).
    Qwen2-VL, Qwen2.5-VL and Qwen3-VL checkpoints load through the same path, but their processors need
    ``torchvision`` (matching the installed torch) with transformers 5.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        batch_size: int = 4,
        max_image_side: int = 768,
    ):
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be in 1..{MAX_NEW_TOKENS_LIMIT}")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        if max_image_side < 28:
            raise ValueError(f"max_image_side={max_image_side} must be at least 28 pixels")
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.max_image_side = max_image_side

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | None = None,
        dtype: Any = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        batch_size: int = 4,
        max_image_side: int = 768,
    ) -> TransformersVLM:
        """Load a checkpoint folder (config.json, weights, processor and tokenizer files, chat template).

        device: defaults to CUDA when available, else CPU. dtype: defaults to bfloat16 on CUDA, float32 on CPU.
        Never touches the network.
        """
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = Path(path)
        missing = []
        if not (folder / "config.json").is_file():
            missing.append("config.json")
        if not any((folder / name).is_file() for name in _PROCESSOR_FILES):
            missing.append(" or ".join(_PROCESSOR_FILES))
        if missing:
            raise ModelFolderError(str(folder), missing, what="vision-language model")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype is None:
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        try:
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, local_files_only=True)
        except Exception as err:  # transformers raises many types here; all mean "this folder cannot load"
            hint = ""
            if importlib.util.find_spec("torchvision") is None:
                hint = " (this model's processor may need torchvision, which is not installed)"
            raise VLMLoadError(
                f"could not load the vision-language model in {str(folder)!r}: {type(err).__name__}: {err}{hint}"
            ) from err
        model.to(device).eval()
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only generation continues after the prompt
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
        logger.info("loaded %s from %s on %s (%s)", type(model).__name__, folder, device, dtype)
        return cls(
            model, processor, max_new_tokens=max_new_tokens, batch_size=batch_size, max_image_side=max_image_side
        )

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    def _shrink(self, image: Any) -> Any:
        from idglow.images import to_pil

        image = to_pil(image)
        side = max(image.size)
        if side > self.max_image_side:
            scale = self.max_image_side / side
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        return image

    def generate(self, conversations: Sequence[Conversation], images: Sequence[Sequence[Any]]) -> list[str]:
        import torch

        if len(conversations) != len(images):
            raise ValueError(f"{len(conversations)} conversations but {len(images)} image lists")
        answers: list[str] = []
        for start in range(0, len(conversations), self.batch_size):
            batch = conversations[start : start + self.batch_size]
            batch_images = [[self._shrink(im) for im in ims] for ims in images[start : start + self.batch_size]]
            texts = [self.processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in batch]
            kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
            if any(batch_images):
                kwargs["images"] = batch_images
            inputs = self.processor(**kwargs).to(self.device)
            for key, value in inputs.items():
                if torch.is_tensor(value) and value.is_floating_point():
                    inputs[key] = value.to(self.dtype)
            with torch.inference_mode():
                output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            answers += self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return answers
