"""The generation use-case: a typed request → one pipeline call per model version → stored candidates.

One base pipeline serves every registered model version: a version with its own adapter folder is loaded
once (cached) and passed to the pipeline as ``adapter=`` for that call only, so nothing shared is ever
changed by a request. GPU work goes through :class:`GpuQueue` (a concurrency limit and a bounded wait list
that refuses at once when full). Every generation is stored with the visitor's id and an expiry, and its
images are written for download. Request types: :mod:`annotation.generation.request`; the people of an
upload: :mod:`annotation.generation.reference_faces`; a visitor's pool and deletion: :mod:`annotation.privacy.visitors`.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from annotation.generation.downloads import write_downloads
from annotation.generation.gpu_queue import GpuQueue
from annotation.generation.reference_faces import DetectedSubject, people_in_photo
from annotation.generation.request import (
    MAX_SEED,
    CandidateResult,
    GenerationRequest,
    GenerationResult,
    check_request_values,
    check_texts,
)
from annotation.generation.safety import PromptBlocklist, SafetyChecker
from annotation.privacy.retention import DEFAULT_RETENTION, expiry
from idglow.errors import InputError
from idglow.samples import example_family
from idglow.serving import GenerationCall, GeneratorStoppedError
from idglow.subjects import AGE_OF_MAJORITY, SubjectRef, validate_group

logger = logging.getLogger(__name__)
CHILD_AGE = AGE_OF_MAJORITY - 1  # stands for "a child" where a person is described as a girl or a boy

__all__ = ["CandidateResult", "GenerationRequest", "GenerationResult", "GenerationService"]


def _ages_for_rules(subjects: Sequence[SubjectRef]) -> list[float | None]:
    """Each person's age as the prompt rules see it: the target age, else a child's age for a person the visitor
    describes as a girl or a boy (the rules for a child subject apply to them too), else None."""
    return [s.target_age if s.target_age is not None else CHILD_AGE if s.described_as_child else None
            for s in subjects]


class GenerationService:
    """Runs generation requests on one base pipeline for every registered model version.

    pipe: an IdGlowPipeline with a face analyzer. sessions: a SQLAlchemy session factory. base_version: the
    name the base pipeline is registered under. synthesizer: writes prompts (default: the pipeline's
    template composer). safety_checker: screens outputs (None: no screening). blocklist: prompt rules.
    generator: runs each pipeline call — by default a :class:`idglow.serving.PipelineRunner` on ``pipe`` in this
    process; a :class:`idglow.serving_process.GeneratorProcess` sends them to Ray Serve replicas instead (then
    ``pipe`` needs only the face analyzer and tokenizers, see :func:`idglow.serving.front_end_model`).
    """

    def __init__(
        self,
        pipe,
        sessions,
        data_dir: str | os.PathLike[str],
        *,
        base_version: str,
        queue: GpuQueue | None = None,
        synthesizer=None,
        safety_checker: SafetyChecker | None = None,
        blocklist: PromptBlocklist | None = None,
        retention: timedelta = DEFAULT_RETENTION,
        default_steps: int = 28,
        default_size: int = 1024,
        generator=None,
    ):
        if getattr(pipe, "face_analyzer", None) is None:
            raise InputError("the generation service needs a pipeline with a face analyzer")
        self.pipe = pipe
        self.sessions = sessions
        self.data_dir = Path(data_dir)
        self.base_version = base_version
        self.queue = queue or GpuQueue()
        self.safety_checker = safety_checker
        self.blocklist = blocklist or PromptBlocklist()
        self.retention = retention
        self.default_steps = default_steps
        self.default_size = default_size
        if synthesizer is None:
            from idglow.prompting import PromptSynthesizer

            synthesizer = PromptSynthesizer.from_pipeline(pipe)
        self.synthesizer = synthesizer
        self._generator = generator
        self._local = None
        if generator is None:
            from idglow.serving import PipelineRunner

            self._local = PipelineRunner(pipe, default_steps, default_size)

    @property
    def generator(self):
        """What runs the pipeline calls: the one given, else a PipelineRunner on ``self.pipe`` (read at each
        call, so a pipeline put in its place is the one that runs)."""
        if self._generator is not None:
            return self._generator
        self._local.pipe = self.pipe
        return self._local

    # -- model versions ------------------------------------------------------------------------------------
    def ensure_base_version(self, adapter_dir: str | None = None, base_model: str | None = None) -> None:
        from sqlalchemy import select

        from annotation.store.candidates import register_model_version
        from db.models import ModelVersion

        with self.sessions() as session:
            if session.scalar(select(ModelVersion.id).where(ModelVersion.name == self.base_version)) is None:
                register_model_version(session, self.base_version, adapter_dir, base_model=base_model,
                                       notes="served by the app")

    def model_versions(self) -> list[str]:
        """The servable versions: the base and every registered version with an adapter folder that exists,
        read from the database on each call; the default version (`idglow models default`) first, else the base."""
        from sqlalchemy import select

        from db.models import ModelVersion

        with self.sessions() as session:
            rows = session.execute(select(ModelVersion.name, ModelVersion.adapter_dir, ModelVersion.is_default)
                                   .order_by(ModelVersion.id)).all()
        names = [self.base_version]
        names += [n for n, d, _ in rows if n != self.base_version and d and Path(d).is_dir()]
        default = next((n for n, _, is_default in rows if is_default and n in names), self.base_version)
        return [default] + [n for n in names if n != default]

    def adapter_dir(self, version: str) -> str | None:
        """The adapter folder of a model version, or None for the base pipeline's own."""
        if version == self.base_version:
            return None
        from annotation.store.candidates import get_model_version

        with self.sessions() as session:
            adapter_dir = get_model_version(session, version).adapter_dir
        if not adapter_dir:
            raise InputError(f"model version {version!r} has no adapter folder to serve")
        return str(adapter_dir)

    def adapter_for(self, version: str):
        """The IdGlowAdapter of a model version (loaded once), or None for the base pipeline's own (local
        generator only)."""
        return self.generator.adapter_for(self.adapter_dir(version))

    # -- people and prompt ---------------------------------------------------------------------------------
    def people_in_photo(self, name: str, image: Any, *, group: bool = False) -> list[DetectedSubject]:
        """The people of one decoded photo (see :func:`annotation.generation.reference_faces.people_in_photo`)."""
        return people_in_photo(self.pipe.face_analyzer, name, image, group=group)

    def example_people(self) -> list[DetectedSubject]:
        """The people of the example family (bundled sample portraits, written under the data dir once)."""
        from idglow.images import decode_image

        paths = example_family(self.data_dir / "samples", self.pipe.face_analyzer)
        return [p for path in paths for p in self.people_in_photo(path.name, decode_image(path))]

    def compose_prompt(self, subjects: Sequence[SubjectRef], task: str, scene: str):
        """A GroupPrompt written from the subjects and the scene (the VLM when configured, else the template)."""
        validate_group(subjects, task)
        check_texts(scene or "", "", subjects)
        prompt = self.synthesizer.compose(list(subjects), task=task, scene=scene or "", badcases=self._badcases(task))
        self.blocklist.check([scene or "", prompt.text], task, _ages_for_rules(subjects))
        return prompt

    def _badcases(self, task: str) -> list:
        """The newest bad cases annotators flagged for this task; the synthesizer picks the most relevant."""
        from annotation.store.badcase_store import recent_badcases

        with self.sessions() as session:
            return recent_badcases(session, task=task)

    def check_request(self, request: GenerationRequest) -> None:
        """Cheap checks, before the request waits for the GPU."""
        check_request_values(request)
        served = self.model_versions()
        unknown = [v for v in request.model_versions if v not in served]
        if unknown:
            raise InputError(f"unknown model version {unknown[0]!r}; available: {', '.join(served)}")
        self.blocklist.check([request.scene, request.prompt], request.task, _ages_for_rules(request.subjects))

    # -- generation ----------------------------------------------------------------------------------------
    def _prompt(self, request: GenerationRequest) -> tuple[dict[str, Any], str, str, list, list[int] | None]:
        """(pipeline prompt arguments, prompt text, its source, ids of the bad cases that shaped it, each
        person's place left to right as the prompt gives it or None)."""
        if request.prompt.strip():
            text = request.prompt.strip()
            return {"prompt": text}, text, "user", [], typed_prompt_positions(text, [s.label for s in request.subjects])
        group_prompt = self.compose_prompt(request.subjects, request.task, request.scene)
        return (group_prompt.pipeline_kwargs(), group_prompt.text, group_prompt.source,
                list(group_prompt.badcase_ids), written_prompt_positions(group_prompt, len(request.subjects)))

    def generate(
        self,
        request: GenerationRequest,
        on_step: Callable[[int, int], None] | None = None,
        on_wait: Callable[[int], None] | None = None,
    ) -> GenerationResult:
        """Run the request on every chosen model version (same subjects, same seeds), screen the images,
        store the generation(s) for this visitor with an expiry and write the download files.

        Cheap checks run first; then the request takes its place in the generator's queue: a full queue (or a
        visitor with too many pending) is refused at once, and the preparation (prompt writing, face analysis)
        runs in turn, not all at once."""
        self.check_request(request)
        with self.queue.slot(on_wait, owner=request.visitor_id):
            return self._generate(request, on_step)

    def _generate(self, request: GenerationRequest, on_step: Callable[[int, int], None] | None) -> GenerationResult:
        versions = list(dict.fromkeys(request.model_versions)) or [self.base_version]
        prompt_kwargs, prompt_text, source, badcase_ids, positions = self._prompt(request)
        self.blocklist.check([prompt_text], request.task, _ages_for_rules(request.subjects))
        seed = secrets.randbelow(MAX_SEED + 1) if request.seed is None else int(request.seed)
        steps = request.num_inference_steps or self.default_steps
        total = steps * len(versions)
        adapter_dirs = {v: self.adapter_dir(v) for v in versions}

        outputs = []
        for k, version in enumerate(versions):
            def step(done: int, _steps: int, _offset=k * steps) -> None:
                if on_step is not None:
                    on_step(_offset + done, total)

            call = GenerationCall(
                prompt_kwargs=prompt_kwargs, subjects=list(request.subjects), seed=seed, task=request.task,
                num_inference_steps=steps, guidance_scale=float(request.guidance_scale),
                height=request.height or self.default_size, width=request.width or self.default_size,
                id_scale=float(request.id_scale), id_window=request.id_window, id_profile=request.id_profile,
                num_images=request.num_images, adapter_dir=adapter_dirs[version], subject_positions=positions,
            )
            out = self._run(call, step)
            out.params["prompt_badcases"] = badcase_ids  # the flagged bad cases that shaped the prompt
            outputs.append((version, out))
        result = self._store(request, outputs, prompt_text, source, seed)
        if request.visitor_id:
            labels = [s.label or f"Person {i}" for i, s in enumerate(request.subjects, start=1)]
            result.downloads = write_downloads(self.data_dir, request.visitor_id, result, labels)
        return result

    def _run(self, call: GenerationCall, on_step: Callable[[int, int], None]):
        """One pipeline call on the generator. A generator that stopped before the first step (e.g. a replica
        that had just died) is asked once more; one that stopped during the generation is reported."""
        started = []

        def step(done: int, total: int) -> None:
            started.append(done)
            on_step(done, total)

        try:
            return self.generator.run(call, step)
        except GeneratorStoppedError:
            if started:
                raise
            logger.warning("the generator stopped before the first step; trying once more")
            return self.generator.run(call, step)

    def _screen(self, images: list) -> list[str | None]:
        if self.safety_checker is None:
            return [None] * len(images)
        verdicts = self.safety_checker.check(images)
        return [f"withheld by the safety checker ({v.label}, {v.score:.2f})" if v.flagged else None for v in verdicts]

    def _register(self, session, request: GenerationRequest, version: str, out, prompt_text: str, source: str,
                  expires):
        from annotation.store.candidates import GenerationRecord, register_generation

        return register_generation(
            session,
            GenerationRecord(
                task=request.task, final_prompt=prompt_text, model_version=version,
                subjects=list(request.subjects),  # each person's one record, stored as it is
                user_prompt=request.prompt or request.scene, prompt_source=source, params=out.params,
                visitor_id=request.visitor_id, consent=request.consent, expires_at=expires,
            ),
            self.data_dir,
        )

    def _store(self, request, outputs, prompt_text, source, seed) -> GenerationResult:
        from annotation.store.candidates import CandidateRecord, add_candidates
        from db.types import utcnow

        expires = expiry(utcnow(), self.retention)
        result = GenerationResult(prompt=prompt_text, prompt_source=source, seed=seed, candidates=[])
        with self.sessions() as session:
            for version, out in outputs:
                withheld = self._screen(out.images)
                matches = out.face_matches or [None] * len(out.images)
                bindings = getattr(out, "bindings", None) or [None] * len(out.images)
                gen = self._register(session, request, version, out, prompt_text, source, expires)
                result.generation_ids.append(gen.id)
                records = [
                    CandidateRecord(image=img, seed=s, face_matches=stored_faces(m, b), metrics=candidate_metrics(m, b))
                    for img, s, m, b, w in zip(out.images, out.seeds, matches, bindings, withheld) if w is None
                ]
                stored = iter(add_candidates(session, gen.id, records, self.data_dir))
                for img, s, m, b, w in zip(out.images, out.seeds, matches, bindings, withheld):
                    cand = None if w else next(stored)
                    n = len(request.subjects)
                    result.candidates.append(CandidateResult(
                        image=None if w else img, seed=s, model_version=version,
                        identity_scores=_identity_scores(m, n),
                        candidate_id=cand.id if cand is not None else None, withheld=w,
                        estimated_ages=_estimated_ages(m, n),
                        in_place=_per_person(b, "in_place", n), instead=_per_person(b, "instead", n),
                    ))
                result.params = out.params
        return result

    # -- visitor data --------------------------------------------------------------------------------------
    def add_to_pool(self, visitor_id: str, generation_ids: Sequence[int]) -> int:
        """Put this visitor's candidates of ``generation_ids`` in the annotation pool and keep them."""
        from annotation.privacy.visitors import pool_visitor_results

        with self.sessions() as session:
            return pool_visitor_results(session, visitor_id, generation_ids)

    def delete_visitor_data(self, visitor_id: str, shown: Sequence[Any] = ()):
        """Delete everything stored for this visitor, and the served copies of pictures that were only shown
        (``shown``: e.g. face crops of photos that were never generated from); returns the counts (a
        ``DeletionResult``)."""
        from annotation.privacy.retention import forget_visitor_files
        from annotation.privacy.visitors import delete_visitor

        with self.sessions() as session:
            result = delete_visitor(session, visitor_id, self.data_dir)
        if shown:
            forget_visitor_files(self.data_dir, visitor_id, list(shown))
        forget_faces = getattr(self.pipe.face_analyzer, "forget", None)  # faces remembered in memory (all)
        if forget_faces is not None:
            forget_faces()
        return result


def _identity_scores(match, num_people: int) -> list[float | None]:
    """Similarity per person; None where that person's face was not found in the image."""
    if match is None:
        return [None] * num_people
    missing = set(match.missing)
    return [None if i in missing or match.face_of_slot[i] is None else round(float(v), 4)
            for i, v in enumerate(match.similarity)]


def _estimated_ages(match, num_people: int) -> list[float | None]:
    """The apparent age of each person's face in the image (``FaceMatch.ages``), where the face backend gives
    one; else None."""
    ages = list(getattr(match, "ages", None) or [])
    return ages if len(ages) == num_people else [None] * num_people


def _per_person(binding, name: str, num_people: int) -> list:
    """A per-person list of a binding (``in_place``, ``instead``); None for each person without a binding."""
    values = list(getattr(binding, name, None) or [])
    return values if len(values) == num_people else [None] * num_people


def written_prompt_positions(group_prompt, num_people: int) -> list[int] | None:
    """Each person's place (1 = leftmost), slot order, as a written prompt (``GroupPrompt``) puts them; None
    when its people do not cover every slot once."""
    by_slot = {p.slot: p.position for p in group_prompt.persons}
    if sorted(by_slot) != list(range(num_people)) or sorted(by_slot.values()) != list(range(1, num_people + 1)):
        return None
    return [int(by_slot[j]) for j in range(num_people)]


def typed_prompt_positions(text: str, labels: Sequence[str | None]) -> list[int] | None:
    """Each person's place (slot order, 1 = leftmost) as a prompt's text states it (``prompt_positions``): by
    name when every person has one, else the position markers in slot order; None when the text does not place
    every person."""
    from idglow.faces.scoring import prompt_positions

    if labels and all(labels):
        return prompt_positions(text, labels=list(labels))
    return prompt_positions(text, num_people=len(labels))


def stored_faces(match, binding) -> dict[str, Any] | None:
    """A candidate's faces JSON: the identity match (``FaceMatch.to_dict``), with the binding
    (``GroupBinding.to_dict``) under ``"binding"`` when one was computed."""
    if match is None:
        return None
    record = match.to_dict()
    if binding is not None:
        record["binding"] = binding.to_dict()
    return record


def candidate_metrics(match, binding) -> dict[str, Any] | None:
    """A candidate's metrics: mean identity similarity, and where the prompt placed people the swap count and
    binding accuracy."""
    if match is None:
        return None
    metrics: dict[str, Any] = {"identity_mean": round(match.mean_similarity, 4)}
    if binding is not None and binding.places is not None:
        accuracy = binding.binding_accuracy
        metrics["swaps"] = binding.swaps
        metrics["binding_accuracy"] = None if accuracy is None else round(accuracy, 4)
    return metrics
