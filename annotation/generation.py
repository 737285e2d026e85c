"""The generation service: a typed request → one pipeline call per model version → stored candidates.

One base pipeline serves every registered model version: a version with its own adapter folder is loaded
once (cached) and passed to the pipeline as ``adapter=`` for that call only, so nothing shared is ever
changed by a request. GPU work goes through :class:`GpuQueue` (a concurrency limit and a bounded wait list
that refuses at once when full). Every generation is stored with the visitor's id and an expiry; the visitor
can add it to the annotation pool (which keeps it) or delete everything of theirs.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from annotation.gpu_queue import GpuQueue
from annotation.privacy import DEFAULT_RETENTION, expiry
from annotation.safety import PromptBlocklist, SafetyChecker
from idglow.errors import InputError, NoFaceError
from idglow.subjects import MAX_SUBJECTS, SubjectRef

logger = logging.getLogger(__name__)

MAX_CANDIDATES = 8
MIN_SIZE, MAX_SIZE = 64, 2048
MAX_STEPS = 100
CROP_SIZE = 256


@dataclass
class DetectedSubject:
    """A person found in the uploads: ``crop`` (a face-centred square, the stored reference) and the
    index of that person's face among the crop's faces, largest first."""

    crop: Any
    face_index: int
    source: str


@dataclass
class SubjectInput:
    image: Any  # PIL image (already decoded and stripped of metadata)
    label: str | None = None
    target_age: float | None = None
    weight: float = 1.0
    face_index: int | None = None


@dataclass
class GenerationRequest:
    """Everything a visitor chose. ``prompt`` (non-empty) is used as given; otherwise the prompt is written
    from the subjects and ``scene``. ``model_versions``: names of registered versions (empty = the base)."""

    subjects: Sequence[SubjectInput]
    task: str = "fusion"
    scene: str = ""
    prompt: str = ""
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float = 3.5
    id_scale: float = 1.0
    id_window: tuple[float, float] | None = None
    num_images: int = 2
    height: int | None = None
    width: int | None = None
    model_versions: Sequence[str] = ()
    visitor_id: str | None = None
    consent: bool = False


@dataclass
class CandidateResult:
    image: Any  # None when withheld by the safety checker
    seed: int
    model_version: str
    identity_scores: list[float]
    candidate_id: int | None = None
    withheld: str | None = None  # why the image is not shown


@dataclass
class GenerationResult:
    prompt: str
    prompt_source: str
    seed: int
    candidates: list[CandidateResult]
    generation_ids: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


def _center_face(faces, size: tuple[int, int]) -> int:
    cx, cy = size[0] / 2, size[1] / 2

    def dist(face) -> float:
        x1, y1, x2, y2 = face.bbox
        return ((x1 + x2) / 2 - cx) ** 2 + ((y1 + y2) / 2 - cy) ** 2

    return min(range(len(faces)), key=lambda i: dist(faces[i]))


def detect_subjects(analyzer, images: Sequence[tuple[str, Any]], crop_size: int = CROP_SIZE) -> list[DetectedSubject]:
    """The people of an upload: one per photo (its largest face), or, for a single photo with several
    faces, every face from left to right. Raises NoFaceError / InputError naming the photo."""
    from PIL import Image

    from idglow.faces.base import sort_largest_first
    from idglow.samples import crop_box

    if not images:
        raise InputError("upload at least one portrait")
    if len(images) > MAX_SUBJECTS:
        raise InputError(f"{len(images)} photos uploaded; at most {MAX_SUBJECTS} people are supported")
    picked: list[tuple[str, Any, Any]] = []
    for slot, (name, image) in enumerate(images):
        faces = sort_largest_first(analyzer.detect(image))
        if not faces:
            raise NoFaceError(slot, name)
        if len(images) == 1 and len(faces) > 1:
            if len(faces) > MAX_SUBJECTS:
                raise InputError(f"{name}: {len(faces)} faces found; at most {MAX_SUBJECTS} people are supported")
            picked.extend((name, image, f) for f in sorted(faces, key=lambda f: f.bbox[0]))
        else:
            picked.append((name, image, faces[0]))
    subjects = []
    for name, image, face in picked:
        crop = image.crop(crop_box(face.bbox, *image.size)).resize((crop_size, crop_size), Image.LANCZOS)
        crop_faces = sort_largest_first(analyzer.detect(crop))
        if not crop_faces:  # the crop lost the face (tiny face at the border): keep the whole photo
            subjects.append(DetectedSubject(image, 0, name))
            continue
        subjects.append(DetectedSubject(crop, _center_face(crop_faces, crop.size), name))
    return subjects


class GenerationService:
    """Runs generation requests on one base pipeline for every registered model version.

    pipe: an IdGlowPipeline with a face analyzer. sessions: a SQLAlchemy session factory. base_version: the
    name the base pipeline is registered under. synthesizer: writes prompts (default: the pipeline's
    template composer). safety_checker: screens outputs (None: no screening). blocklist: prompt rules.
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
        self._adapters: dict[str, Any] = {}
        self._adapter_lock = threading.Lock()

    # -- model versions ------------------------------------------------------------------------------------
    def ensure_base_version(self, adapter_dir: str | None = None, base_model: str | None = None) -> None:
        from sqlalchemy import select

        from annotation.candidates import register_model_version
        from db.models import ModelVersion

        with self.sessions() as session:
            if session.scalar(select(ModelVersion.id).where(ModelVersion.name == self.base_version)) is None:
                register_model_version(session, self.base_version, adapter_dir, base_model=base_model,
                                       notes="served by the app")

    def model_versions(self) -> list[str]:
        """The base version first, then every registered version with an adapter folder that exists."""
        from sqlalchemy import select

        from db.models import ModelVersion

        with self.sessions() as session:
            rows = session.execute(select(ModelVersion.name, ModelVersion.adapter_dir).order_by(ModelVersion.id)).all()
        names = [self.base_version]
        names += [n for n, d in rows if n != self.base_version and d and Path(d).is_dir()]
        return names

    def adapter_for(self, version: str):
        """The IdGlowAdapter of a model version (loaded once), or None for the base pipeline's own."""
        if version == self.base_version:
            return None
        with self._adapter_lock:
            if version in self._adapters:
                return self._adapters[version]
            from annotation.candidates import get_model_version
            from idglow.adapter import IdGlowAdapter
            from idglow.pipeline import check_adapter_folder

            with self.sessions() as session:
                mv = get_model_version(session, version)
                adapter_dir = mv.adapter_dir
            if not adapter_dir:
                raise InputError(f"model version {version!r} has no adapter folder to serve")
            transformer = self.pipe.transformer
            adapter = IdGlowAdapter.from_pretrained(str(check_adapter_folder(adapter_dir)))
            adapter.check_compatible(transformer)
            id_dim = self.pipe.face_analyzer.embedding_dim
            if adapter.config.id_dim != id_dim:
                raise InputError(
                    f"model version {version!r} expects {adapter.config.id_dim}-d face embeddings; the face "
                    f"analyzer gives {id_dim}-d"
                )
            adapter = adapter.to(device=transformer.device, dtype=transformer.dtype).eval()
            logger.info("loaded adapter of model version %s", version)
            self._adapters[version] = adapter
            return adapter

    # -- subjects and prompt -------------------------------------------------------------------------------
    def detect_subjects(self, images: Sequence[tuple[str, Any]]) -> list[DetectedSubject]:
        return detect_subjects(self.pipe.face_analyzer, images)

    @staticmethod
    def _refs(subjects: Sequence[SubjectInput]) -> list[SubjectRef]:
        return [SubjectRef(s.image, target_age=s.target_age, weight=s.weight, label=s.label, face_index=s.face_index)
                for s in subjects]

    def compose_prompt(self, subjects: Sequence[SubjectInput], task: str, scene: str):
        """A GroupPrompt written from the subjects and the scene (the VLM when configured, else the template)."""
        self._check_subjects(subjects, task)
        prompt = self.synthesizer.compose(self._refs(subjects), task=task, scene=scene or "")
        self.blocklist.check([scene or "", prompt.text], task, [s.target_age for s in subjects])
        return prompt

    @staticmethod
    def _check_subjects(subjects: Sequence[SubjectInput], task: str) -> None:
        if not subjects:
            raise InputError("upload at least one portrait first")
        if len(subjects) > MAX_SUBJECTS:
            raise InputError(f"{len(subjects)} subjects; at most {MAX_SUBJECTS} are supported")
        if task not in ("fusion", "age"):
            raise InputError(f"unknown task {task!r}; expected fusion or age")
        for slot, s in enumerate(subjects):
            if s.target_age is not None and not 0 <= s.target_age <= 120:
                raise InputError(f"person {slot + 1}: target age {s.target_age} must be between 0 and 120")
            if not 0 <= s.weight <= 3:
                raise InputError(f"person {slot + 1}: ID weight {s.weight} must be between 0 and 3")
        if task == "age":
            missing = [str(i + 1) for i, s in enumerate(subjects) if s.target_age is None]
            if missing:
                raise InputError(f"age transformation needs a target age for every person; missing for person {', '.join(missing)}")

    def check_request(self, request: GenerationRequest) -> None:
        """Cheap checks, before the request waits for the GPU."""
        self._check_subjects(request.subjects, request.task)
        if not request.consent:
            raise InputError("please confirm that you may use these photos (consent box) before generating")
        if not 1 <= request.num_images <= MAX_CANDIDATES:
            raise InputError(f"number of candidates {request.num_images} must be between 1 and {MAX_CANDIDATES}")
        steps = request.num_inference_steps
        if steps is not None and not 1 <= steps <= MAX_STEPS:
            raise InputError(f"steps {steps} must be between 1 and {MAX_STEPS}")
        for name in ("height", "width"):
            value = getattr(request, name)
            if value is not None and (not MIN_SIZE <= value <= MAX_SIZE or value % 16):
                raise InputError(f"{name} {value} must be a multiple of 16 between {MIN_SIZE} and {MAX_SIZE}")
        if not 0 <= request.id_scale <= 3:
            raise InputError(f"ID weight {request.id_scale} must be between 0 and 3")
        if request.seed is not None and not 0 <= request.seed < 2**31 - MAX_CANDIDATES:
            raise InputError(f"seed {request.seed} must be between 0 and {2**31 - MAX_CANDIDATES - 1}")
        if request.id_window is not None:
            from idglow.schedule import IdentityWindow

            IdentityWindow(*request.id_window)  # InputError naming the bad bound
        served = self.model_versions()
        unknown = [v for v in request.model_versions if v not in served]
        if unknown:
            raise InputError(f"unknown model version {unknown[0]!r}; available: {', '.join(served)}")
        self.blocklist.check([request.scene, request.prompt], request.task, [s.target_age for s in request.subjects])

    # -- generation ----------------------------------------------------------------------------------------
    def generate(
        self,
        request: GenerationRequest,
        on_step: Callable[[int, int], None] | None = None,
        on_wait: Callable[[int], None] | None = None,
    ) -> GenerationResult:
        """Run the request on every chosen model version (same subjects, same seeds), screen the images,
        and store the generation(s) for this visitor with an expiry. The request takes its place in the
        generator's queue first: a full queue (or a visitor with too many pending) is refused at once, and the
        preparation (prompt writing, face analysis) runs in turn, not all at once."""
        with self.queue.slot(on_wait, owner=request.visitor_id):
            return self._generate(request, on_step)

    def _generate(self, request: GenerationRequest, on_step: Callable[[int, int], None] | None) -> GenerationResult:
        import secrets

        self.check_request(request)
        versions = list(dict.fromkeys(request.model_versions)) or [self.base_version]
        refs = self._refs(request.subjects)
        if request.prompt.strip():
            prompt_kwargs, prompt_text, source = {"prompt": request.prompt.strip()}, request.prompt.strip(), "user"
        else:
            group_prompt = self.compose_prompt(request.subjects, request.task, request.scene)
            prompt_kwargs, prompt_text, source = group_prompt.pipeline_kwargs(), group_prompt.text, group_prompt.source
        self.blocklist.check([prompt_text], request.task, [s.target_age for s in request.subjects])
        seed = secrets.randbelow(2**31 - MAX_CANDIDATES) if request.seed is None else int(request.seed)
        steps = request.num_inference_steps or self.default_steps
        total = steps * len(versions)
        adapters = {v: self.adapter_for(v) for v in versions}

        outputs = []
        for k, version in enumerate(versions):
            def callback(pipe, step, timestep, kwargs, _offset=k * steps):
                if on_step is not None:
                    on_step(_offset + step + 1, total)
                return kwargs

            out = self.pipe(
                **prompt_kwargs,
                subjects=refs,
                task=request.task,
                id_scale=float(request.id_scale),
                id_window=request.id_window,
                num_images=request.num_images,
                seed=seed,
                adapter=adapters[version],
                num_inference_steps=steps,
                guidance_scale=float(request.guidance_scale),
                height=request.height or self.default_size,
                width=request.width or self.default_size,
                callback_on_step_end=callback,
            )
            outputs.append((version, out))
        return self._store(request, outputs, prompt_text, source, seed)

    def _screen(self, images: list) -> list[str | None]:
        if self.safety_checker is None:
            return [None] * len(images)
        verdicts = self.safety_checker.check(images)
        return [f"withheld by the safety checker ({v.label}, {v.score:.2f})" if v.flagged else None for v in verdicts]

    def _store(self, request, outputs, prompt_text, source, seed) -> GenerationResult:
        from annotation.candidates import (
            CandidateRecord,
            GenerationRecord,
            SubjectRecord,
            add_candidates,
            register_generation,
        )
        from db.types import utcnow

        expires = expiry(utcnow(), self.retention)
        result = GenerationResult(prompt=prompt_text, prompt_source=source, seed=seed, candidates=[])
        with self.sessions() as session:
            for version, out in outputs:
                withheld = self._screen(out.images)
                matches = out.face_matches or [None] * len(out.images)
                gen = register_generation(
                    session,
                    GenerationRecord(
                        task=request.task,
                        final_prompt=prompt_text,
                        model_version=version,
                        subjects=[SubjectRecord(s.image, s.target_age, s.label) for s in request.subjects],
                        user_prompt=request.prompt or request.scene,
                        prompt_source=source,
                        params=out.params,
                        visitor_id=request.visitor_id,
                        consent=request.consent,
                        expires_at=expires,
                    ),
                    self.data_dir,
                )
                result.generation_ids.append(gen.id)
                records = [
                    CandidateRecord(image=img, seed=s, face_matches=m,
                                    metrics={"identity_mean": round(m.mean_similarity, 4)} if m else None)
                    for img, s, m, w in zip(out.images, out.seeds, matches, withheld) if w is None
                ]
                stored = iter(add_candidates(session, gen.id, records, self.data_dir))
                for img, s, m, w in zip(out.images, out.seeds, matches, withheld):
                    scores = [round(float(v), 4) for v in m.similarity] if m else [0.0] * len(request.subjects)
                    cand = None if w else next(stored)
                    result.candidates.append(CandidateResult(
                        image=None if w else img, seed=s, model_version=version, identity_scores=scores,
                        candidate_id=cand.id if cand is not None else None, withheld=w,
                    ))
                result.params = out.params
        return result

    # -- visitor data --------------------------------------------------------------------------------------
    def add_to_pool(self, visitor_id: str, generation_ids: Sequence[int]) -> int:
        """Put this visitor's candidates of ``generation_ids`` in the annotation pool and keep them (their
        expiry is lifted). Returns the number of pooled candidates."""
        from sqlalchemy import select, update

        from annotation.candidates import add_to_pool
        from db.models import Candidate, Generation, GenerationSubject, ReferencePhoto

        if not visitor_id or not generation_ids:
            raise InputError("generate some images first")
        with self.sessions() as session:
            owned = list(session.scalars(select(Generation.id).where(
                Generation.id.in_(list(generation_ids)), Generation.visitor_id == visitor_id)))
            if len(owned) != len(set(generation_ids)):
                raise InputError("these results are not yours or have expired")
            ids = list(session.scalars(select(Candidate.id).where(Candidate.generation_id.in_(owned))))
            if not ids:
                raise InputError("no stored image to add (all were withheld)")
            photo_ids = select(GenerationSubject.reference_photo_id).where(GenerationSubject.generation_id.in_(owned))
            session.execute(update(Generation).where(Generation.id.in_(owned)).values(expires_at=None))
            session.execute(update(ReferencePhoto).where(ReferencePhoto.id.in_(photo_ids),
                                                        ReferencePhoto.visitor_id == visitor_id)
                            .values(expires_at=None, consent=True))
            session.commit()
            add_to_pool(session, ids)
        return len(ids)

    def delete_visitor_data(self, visitor_id: str):
        from annotation.candidates import delete_visitor_data

        if not visitor_id:
            raise InputError("there is no data of yours on this server")
        with self.sessions() as session:
            return delete_visitor_data(session, visitor_id, self.data_dir)
