"""PromptSynthesizer: a group prompt from reference photos, the task, the user's scene and past badcases."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from idglow.errors import InputError, NoFaceError
from idglow.prompting.badcases import Badcase, failure_types_of, select_badcases
from idglow.prompting.phrases import normalize_gender
from idglow.prompting.schema import ModelAnswer, ResponseError, parse_response
from idglow.prompting.template import TemplateComposer, apply_describe_as, persons_from_attributes
from idglow.prompting.tokens import CLIP_MAX_TOKENS, T5_MAX_TOKENS, TokenCounter
from idglow.prompting.types import GroupPrompt
from idglow.prompting.vlm import Conversation, VLMBackend, build_conversation, repair_conversation
from idglow.subjects import SubjectRef, validate_group

logger = logging.getLogger(__name__)


@dataclass
class PromptRequest:
    """One prompt to write: the subjects in slot order, the task, the user's scene and candidate badcases.

    apparent_ages / genders: each person's age and gender when they are already known (a training photo's
    recorded or estimated ages): used instead of asking the face analyzer, so no image needs to be read unless
    a vision-language model describes the people. positions: where each person stands (1 = leftmost) when the
    picture is given (a training photo): it overrides the places a model proposes.
    """

    subjects: Sequence[SubjectRef]
    task: str = "fusion"
    scene: str = ""
    badcases: Sequence[Badcase] = ()
    apparent_ages: Sequence[float | None] | None = None
    genders: Sequence[str | None] | None = None
    positions: Sequence[int] | None = None


@dataclass
class _Prepared:
    request: PromptRequest
    target_ages: list[float | None]
    labels: list[str | None]
    describe_as: list[str | None]
    images: list[Any]
    apparent_ages: list[float | None]
    genders: list[str | None]
    badcases: list[Badcase]
    failure_types: list[str]
    answer: ModelAnswer | None = None
    reason: str | None = None
    conversation: Conversation = field(default_factory=list)


def _known(values: Sequence[Any] | None, n: int, kind: type) -> list[Any]:
    """``values`` (one per person, None where unknown) as ``kind``; all None when not given."""
    if values is None:
        return [None] * n
    if len(values) != n:
        raise InputError(f"{len(values)} known attribute values for {n} people")
    return [None if v is None else kind(v) for v in values]


def _limit(tokenizer: Any | None, cap: int) -> int:
    length = getattr(tokenizer, "model_max_length", None)
    return min(cap, length) if isinstance(length, int) and length > 0 else cap


class PromptSynthesizer:
    """Writes :class:`GroupPrompt`s, with a vision-language model when one is given, else from a template.

    vlm: a :class:`VLMBackend` (e.g. ``TransformersVLM.from_pretrained(path)``) or None. face_analyzer: a
    ``FaceAnalyzer`` whose faces give apparent age and gender when the backend provides them; with an
    analyzer a photo without a face raises ``NoFaceError``. tokenizer / tokenizer_2: the pipeline's CLIP and
    T5 tokenizers, used to measure the prompt against ``clip_max_tokens`` / ``t5_max_tokens`` (a word-based
    estimate without them); the limits default to 77 and 512, or to a tokenizer's smaller
    ``model_max_length``. max_badcases: how many badcases shape one prompt. repair_attempts: how many
    times an invalid model answer is sent back with its problems before falling back to the template.
    """

    def __init__(
        self,
        vlm: VLMBackend | None = None,
        face_analyzer: Any | None = None,
        tokenizer: Any | None = None,
        tokenizer_2: Any | None = None,
        *,
        max_badcases: int = 4,
        clip_max_tokens: int | None = None,
        t5_max_tokens: int | None = None,
        repair_attempts: int = 1,
    ):
        if max_badcases < 0:
            raise ValueError(f"max_badcases={max_badcases} must be >= 0")
        if repair_attempts < 0:
            raise ValueError(f"repair_attempts={repair_attempts} must be >= 0")
        self.vlm = vlm
        self.face_analyzer = face_analyzer
        self.max_badcases = max_badcases
        self.repair_attempts = repair_attempts
        if clip_max_tokens is None:
            clip_max_tokens = _limit(tokenizer, CLIP_MAX_TOKENS)
        if t5_max_tokens is None:
            t5_max_tokens = _limit(tokenizer_2, T5_MAX_TOKENS)
        self.composer = TemplateComposer(
            TokenCounter(tokenizer), TokenCounter(tokenizer_2), clip_max_tokens, t5_max_tokens
        )

    @classmethod
    def from_pipeline(cls, pipe: Any, vlm: VLMBackend | None = None, face_analyzer: Any | None = None, **kwargs):
        """Measure tokens with ``pipe.tokenizer`` (CLIP) and ``pipe.tokenizer_2`` (T5); reuse the pipeline's
        face analyzer unless another one is given."""
        if face_analyzer is None:
            face_analyzer = getattr(pipe, "face_analyzer", None)
        return cls(
            vlm=vlm,
            face_analyzer=face_analyzer,
            tokenizer=getattr(pipe, "tokenizer", None),
            tokenizer_2=getattr(pipe, "tokenizer_2", None),
            **kwargs,
        )

    # -- public API --------------------------------------------------------------------------------------
    def compose(
        self,
        subjects: Sequence[SubjectRef],
        task: str = "fusion",
        scene: str = "",
        badcases: Sequence[Badcase] = (),
    ) -> GroupPrompt:
        """The prompt for one request (see :meth:`compose_batch`)."""
        return self.compose_batch([PromptRequest(subjects, task, scene or "", tuple(badcases or ()))])[0]

    def compose_batch(self, requests: Sequence[PromptRequest]) -> list[GroupPrompt]:
        """Prompts for several requests; the model sees them as one batch (plus one batch per repair round).

        For each request: check the subjects, read face attributes, pick the most relevant badcases, ask the
        model (if any) for a JSON description, validate it (with ``repair_attempts`` repairs), and render
        the text. A request whose model answer stays invalid gets the template prompt, with
        ``source="template"`` and ``fallback_reason`` saying why.
        """
        prepared = [self._prepare(r) for r in requests]
        if self.vlm is not None and prepared:
            self._ask_model(prepared)
        return [self._render(p) for p in prepared]

    # -- steps -------------------------------------------------------------------------------------------
    def _prepare(self, request: PromptRequest) -> _Prepared:
        from idglow.images import to_pil

        subjects = list(request.subjects)
        for slot, subject in enumerate(subjects):
            if not isinstance(subject, SubjectRef):
                raise InputError(f"subject {slot + 1} must be a SubjectRef, got {type(subject).__name__}")
        validate_group(subjects, request.task)  # SubjectRef has checked each age when it was built
        target_ages = [s.target_age for s in subjects]

        known = request.apparent_ages is not None or request.genders is not None
        need_images = self.vlm is not None or (self.face_analyzer is not None and not known)
        images = [to_pil(s.image) for s in subjects] if need_images else []
        apparent = _known(request.apparent_ages, len(subjects), float)
        genders = [normalize_gender(g) for g in _known(request.genders, len(subjects), str)]
        if self.face_analyzer is not None and not known:
            for slot, (subject, image) in enumerate(zip(subjects, images)):
                face = self._face(slot, subject, image)
                apparent[slot] = None if face.age is None else float(face.age)
                genders[slot] = normalize_gender(face.gender)

        chosen = select_badcases(
            request.badcases, request.task, len(subjects), target_ages, limit=self.max_badcases
        )
        has_target = any(a is not None for a in target_ages)
        return _Prepared(
            request=request,
            target_ages=target_ages,
            labels=[s.label for s in subjects],
            describe_as=[s.describe_as for s in subjects],
            images=images,
            apparent_ages=apparent,
            genders=genders,
            badcases=chosen,
            failure_types=failure_types_of(chosen, has_target),
        )

    def _face(self, slot: int, subject: SubjectRef, image: Any):
        faces = list(self.face_analyzer.detect(image))
        if not faces:
            raise NoFaceError(slot, subject.source)
        if subject.face_index is not None:
            if not 0 <= subject.face_index < len(faces):
                raise InputError(
                    f"subject {slot + 1}: face_index={subject.face_index} but the photo has {len(faces)} face(s)"
                )
            return faces[subject.face_index]
        return max(faces, key=lambda f: f.area)

    def _generate(self, conversations: list[Conversation], images: list[list[Any]]) -> list[str] | str:
        """The model's answers, or the reason it gave none."""
        try:
            answers = list(self.vlm.generate(conversations, images))
        except Exception as err:  # any model failure means "no usable answer"; it is logged and recorded
            logger.warning("the vision-language model failed: %s", err, exc_info=True)
            return f"the vision-language model failed: {type(err).__name__}: {err}"
        if len(answers) != len(conversations):
            return f"the vision-language model gave {len(answers)} answers for {len(conversations)} requests"
        return answers

    def _ask_model(self, prepared: list[_Prepared]) -> None:
        for p in prepared:
            p.conversation = build_conversation(
                p.target_ages, p.labels, p.request.task, p.request.scene, p.failure_types, p.badcases,
                describe_as=p.describe_as,
            )
        pending = list(prepared)
        for attempt in range(self.repair_attempts + 1):
            if not pending:
                break
            answers = self._generate([p.conversation for p in pending], [p.images for p in pending])
            if isinstance(answers, str):
                for p in pending:
                    p.reason = answers
                return
            retry = []
            for p, answer in zip(pending, answers):
                try:
                    p.answer = parse_response(answer, p.target_ages, p.labels)
                    p.reason = None
                except ResponseError as err:
                    label = "answer" if attempt == 0 else f"answer after {attempt} repair(s)"
                    p.reason = f"invalid model {label}: {err}"
                    logger.info("model answer rejected (%s)", err)
                    p.conversation = repair_conversation(p.conversation, answer, err.problems)
                    retry.append(p)
            pending = retry

    def _render(self, p: _Prepared) -> GroupPrompt:
        request = p.request
        if p.answer is not None:
            persons = p.answer.persons
            for person in persons:  # fill what the model left unknown from the face analyzer
                if person.gender is None:
                    person.gender = p.genders[person.slot]
                if person.age is None:
                    person.age = p.apparent_ages[person.slot]
                apply_describe_as(person, p.describe_as[person.slot])  # the visitor's word over any guess
            scene = p.answer.scene or request.scene
            interaction = p.answer.interaction
            source = "vlm"
        else:
            persons = persons_from_attributes(
                len(p.target_ages), p.target_ages, p.apparent_ages, p.genders, p.labels, p.describe_as
            )
            scene, interaction, source = request.scene, "", "template"
            if p.reason is not None:
                logger.warning("prompt written from the template: %s", p.reason)
        if request.positions is not None:
            for person in persons:
                person.position = int(request.positions[person.slot])
        rendered = self.composer.render(persons, request.task, scene, interaction, p.failure_types)
        return GroupPrompt(
            text=rendered.text,
            clip_text=rendered.clip_text,
            persons=sorted(persons, key=lambda q: q.slot),
            scene=rendered.scene,
            interaction=rendered.interaction,
            source=source,
            constraints=rendered.constraints,
            badcase_ids=[bc.id for bc in p.badcases],
            fallback_reason=p.reason if source == "template" else None,
            token_counts=rendered.token_counts,
        )
