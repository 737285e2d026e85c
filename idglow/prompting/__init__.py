"""Prompt synthesis for group photos.

:class:`PromptSynthesizer` writes a :class:`GroupPrompt` that binds every attribute to one person by
position ("the second person from the left, a six-year-old boy with ..."). With a vision-language model
(:class:`TransformersVLM`) the people are described from their reference photos as validated JSON;
without one, or when the model's answer stays invalid, a deterministic template is used. Flagged
:class:`Badcase`s add explicit constraints, and :func:`check_prompt_fidelity` scores a prompt's binding.
"""

from idglow.prompting.badcases import (
    AGE_FAILURE_TYPES,
    FAILURE_CONSTRAINTS,
    FAILURE_TYPES,
    Badcase,
    FailureConstraint,
    select_badcases,
)
from idglow.prompting.fidelity import FidelityReport, FidelityViolation, check_prompt_fidelity
from idglow.prompting.schema import (
    RESPONSE_SCHEMA,
    ModelAnswer,
    ResponseError,
    parse_response,
    validate_response,
)
from idglow.prompting.synthesizer import PromptRequest, PromptSynthesizer
from idglow.prompting.template import TemplateComposer
from idglow.prompting.tokens import CLIP_MAX_TOKENS, T5_MAX_TOKENS, TokenCounter, estimate_tokens
from idglow.prompting.types import GroupPrompt, Known, PersonDescription, SeenPerson
from idglow.prompting.vlm import (
    TransformersVLM,
    VLMBackend,
    VLMLoadError,
    build_conversation,
    build_instruction,
)

__all__ = [
    "AGE_FAILURE_TYPES",
    "CLIP_MAX_TOKENS",
    "FAILURE_CONSTRAINTS",
    "FAILURE_TYPES",
    "RESPONSE_SCHEMA",
    "T5_MAX_TOKENS",
    "Badcase",
    "FailureConstraint",
    "FidelityReport",
    "FidelityViolation",
    "GroupPrompt",
    "Known",
    "ModelAnswer",
    "PersonDescription",
    "PromptRequest",
    "PromptSynthesizer",
    "ResponseError",
    "SeenPerson",
    "TemplateComposer",
    "TokenCounter",
    "TransformersVLM",
    "VLMBackend",
    "VLMLoadError",
    "build_conversation",
    "build_instruction",
    "check_prompt_fidelity",
    "estimate_tokens",
    "parse_response",
    "select_badcases",
    "validate_response",
]
