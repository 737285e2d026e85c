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
from idglow.prompting.template import TemplateComposer, apply_describe_as, template_persons
from idglow.prompting.tokens import CLIP_MAX_TOKENS, T5_MAX_TOKENS, TokenCounter
from idglow.prompting.types import GroupPrompt, Known, PersonDescription, SeenPerson
from idglow.prompting.vlm import Conversation, VLMBackend, build_conversation, repair_conversation
from idglow.subjects import SubjectRef, validate_group

logger = logging.getLogger(__name__)


@dataclass
class PromptRequest:
    """One prompt to write: the subjects in slot order, the task, the user's scene and candidate badcases.

    known: what is already known of each person (one :class:`Known` or None per subject, in slot order; None
    for the whole request: nothing): a training photo's recorded or estimated age and gender, used instead of
    asking the face analyzer (whose photo then need not be read unless a vision-language model describes
    the people), and where the person stands when the picture is given, which overrides the place a model
    or the template proposes. A list of the wrong length, or fixed positions outside 1..N or used twice,
    raise ``InputError``.
    """

    subjects: Sequence[SubjectRef]
    task: str = "fusion"
    scene: str = ""
    badcases: Sequence[Badcase] = ()
    known: Sequence[Known | None] | None = None


@dataclass
class _Prepared:
    request: PromptRequest
    people: list[SeenPerson]
    images: list[Any]
    badcases: list[Badcase]
    failure_types: list[str]
    answer: ModelAnswer | None = None
    reason: str | None = None
    conversation: Conversation = field(default_factory=list)


def _known(known: Sequence[Known | None] | None, n: int) -> list[Known | None]:
    """``known`` checked against a group of ``n`` people; all None when not given."""
    if known is None:
        return [None] * n
    known = list(known)
    if len(known) != n:
        raise InputError(f"{len(known)} entries of known facts for {n} people: give one per person "
                         "(None where nothing is known)")
    for slot, facts in enumerate(known):
        if facts is not None and not isinstance(facts, Known):
            raise InputError(f"known facts of person {slot + 1} must be a Known or None, got {type(facts).__name__}")
    fixed = [facts.position for facts in known if facts is not None and facts.position is not None]
    if any(position > n for position in fixed) or len(set(fixed)) != len(fixed):
        raise InputError(f"fixed positions {fixed} must lie in 1..{n}, each used once")
    return known


def _place(persons: Sequence[PersonDescription], people: Sequence[SeenPerson]) -> None:
    """Put each person whose place the picture fixes there; the others take the free places in the order
    proposed (nothing changes when no place is fixed)."""
    fixed = {seen.position for seen in people if seen.position is not None}
    if not fixed:
        return
    free = iter(sorted(set(range(1, len(people) + 1)) - fixed))
    for person in sorted(persons, key=lambda q: (q.position, q.slot)):
        position = people[person.slot].position
        person.position = position if position is not None else next(free)


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
        known = _known(request.known, len(subjects))
        ask = {slot for slot, facts in enumerate(known) if facts is None} if self.face_analyzer is not None else set()
        images = []
        if self.vlm is not None or ask:
            images = [to_pil(s.image) if self.vlm is not None or slot in ask else None
                      for slot, s in enumerate(subjects)]
        people = [SeenPerson.of(subject, facts) for subject, facts in zip(subjects, known)]
        for slot in sorted(ask):
            face = self._face(slot, subjects[slot], images[slot])
            people[slot] = SeenPerson(subjects[slot], None if face.age is None else float(face.age),
                                      normalize_gender(face.gender))

        target_ages = [s.target_age for s in subjects]
        chosen = select_badcases(
            request.badcases, request.task, len(subjects), target_ages, limit=self.max_badcases
        )
        has_target = any(a is not None for a in target_ages)
        return _Prepared(
            request=request,
            people=people,
            images=images,
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
                p.people, p.request.task, p.request.scene, p.failure_types, p.badcases
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
                    p.answer = parse_response(answer, p.people)
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
            for person in persons:  # fill what the model left unknown from the known facts or the face analyzer
                seen = p.people[person.slot]
                if person.gender is None:
                    person.gender = seen.gender
                if person.age is None:
                    person.age = seen.apparent_age
                apply_describe_as(person, seen.describe_as)  # the visitor's word over any guess
            scene = p.answer.scene or request.scene
            interaction = p.answer.interaction
            source = "vlm"
        else:
            persons = template_persons(p.people)
            scene, interaction, source = request.scene, "", "template"
            if p.reason is not None:
                logger.warning("prompt written from the template: %s", p.reason)
        _place(persons, p.people)
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
