"""What a visitor asks the generator for, what comes back, and the checks a request passes before it waits for
the GPU (the group rules themselves live in :func:`idglow.subjects.validate_group`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idglow.errors import InputError
from idglow.schedule import PROFILES, IdentityWindow
from idglow.subjects import SubjectRef, validate_group

MAX_CANDIDATES = 8
MIN_SIZE, MAX_SIZE = 64, 2048
MAX_STEPS = 100
MAX_PROMPT_CHARS = 1000
MAX_SCENE_CHARS = 300
MAX_LABEL_CHARS = 40
MAX_SEED = 2**31 - MAX_CANDIDATES - 1


@dataclass
class GenerationRequest:
    """Everything a visitor chose. ``subjects`` in slot order. ``prompt`` (non-empty) is used as given;
    otherwise the prompt is written from the subjects and ``scene``. ``model_versions``: names of registered
    versions (empty = the base)."""

    subjects: Sequence[SubjectRef]
    task: str = "fusion"
    scene: str = ""
    prompt: str = ""
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float = 3.5
    id_scale: float = 1.0
    id_window: tuple[float, float] | None = None
    id_profile: str = "flat"  # identity strength inside the window: "flat", or "linear" (decaying to its high edge)
    num_images: int = 2
    height: int | None = None
    width: int | None = None
    model_versions: Sequence[str] = ()
    visitor_id: str | None = None
    consent: bool = False


@dataclass
class CandidateResult:
    """One generated image. identity_scores: cosine similarity per person (None: that face was not found).
    estimated_ages: the face analyzer's age of each person's face, where it gives one. in_place: per person,
    whether the face in their place (as the prompt gives places) is theirs (None: no places to judge).
    instead: per person, the slot of the group member whose face stands in their place instead."""

    image: Any  # None when withheld by the safety checker
    seed: int
    model_version: str
    identity_scores: list[float | None]
    candidate_id: int | None = None
    withheld: str | None = None  # why the image is not shown
    estimated_ages: list[float | None] = field(default_factory=list)
    in_place: list[bool | None] = field(default_factory=list)
    instead: list[int | None] = field(default_factory=list)


@dataclass
class Downloads:
    """Files written for the visitor: one PNG per shown candidate (same order) and a zip with all of them
    and the parameters."""

    images: list[Path]
    archive: Path


@dataclass
class GenerationResult:
    """What one request produced: the prompt used (and who wrote it), the first seed, the candidates of every
    model version, the stored generation ids, the pipeline parameters and the download files."""

    prompt: str
    prompt_source: str
    seed: int
    candidates: list[CandidateResult]
    generation_ids: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    downloads: Downloads | None = None


def check_texts(scene: str, prompt: str, subjects: Sequence[SubjectRef]) -> None:
    """Scene, prompt and labels within their lengths (``InputError`` saying by how much)."""
    for what, text, limit in (("scene", scene, MAX_SCENE_CHARS), ("prompt", prompt, MAX_PROMPT_CHARS)):
        if len(text or "") > limit:
            raise InputError(f"the {what} has {len(text)} characters; please shorten it to {limit} at most")
    for slot, subject in enumerate(subjects, start=1):
        if subject.label and len(subject.label) > MAX_LABEL_CHARS:
            raise InputError(f"the name of person {slot} has {len(subject.label)} characters; "
                             f"please shorten it to {MAX_LABEL_CHARS} at most")


def _check_numbers(request: GenerationRequest) -> None:
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
    if request.seed is not None and not 0 <= request.seed <= MAX_SEED:
        raise InputError(f"seed {request.seed} must be between 0 and {MAX_SEED}")
    if request.id_window is not None:
        IdentityWindow(*request.id_window)  # InputError naming the bad bound
    if request.id_profile not in PROFILES:
        raise InputError(f"identity strength {request.id_profile!r} must be one of {', '.join(PROFILES)}")


def check_request_values(request: GenerationRequest) -> None:
    """The checks that need no model or database: the group rules, consent, numbers and text lengths."""
    validate_group(request.subjects, request.task)
    if not request.consent:
        raise InputError("please confirm that you may use these photos (consent box) before generating")
    _check_numbers(request)
    check_texts(request.scene, request.prompt, request.subjects)
