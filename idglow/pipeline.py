"""IdGlowPipeline: FLUX text-to-image with several identities injected through the IdGlow adapter.

The recipe is FLUX's own (``FluxPipeline.__call__``); IdGlow adds three steps around it:
check inputs → encode subjects (once per call) → denoise with identity injected inside the σ window →
match the faces of every image back to the subjects.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import FluxPipeline

from idglow.adapter import IdGlowAdapter, InjectionState
from idglow.errors import ModelFolderError, NoFaceError
from idglow.faces.base import FaceAnalyzer, FaceMatch, face_backend_name, sort_largest_first
from idglow.faces.binding import GroupBinding, bind_group
from idglow.images import to_rgb_array
from idglow.prompting.tokens import TOKENIZER_LOCK
from idglow.schedule import WINDOW_COORDINATES, IdentityWindow, schedule_shift, sigma_window, slot_windows
from idglow.subjects import SubjectRef, validate_group, validate_task

logger = logging.getLogger(__name__)

FLUX_FOLDERS = ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae")


@dataclass
class IdGlowOutput:
    """images: PIL images. seeds: the seed of each image (seed, seed+1, …; with a user's generators, their
    ``initial_seed()``). params: every setting of the call, including each person's identity window
    (``slot_windows``, in the call's ``window_coordinate``, and ``sigma_windows``, the σ windows the gate read).
    active_sigmas: the σ values at which any identity was injected. face_matches: per image, the match of its
    faces to the subjects (None when no face analyzer is set). bindings: per image, who stands in each
    person's place (``bind_group`` on the same faces; ``in_place`` and ``swaps`` are None unless the call gave
    ``subject_positions``); ``bindings[i].match`` is ``face_matches[i]``."""

    images: list
    seeds: list[int]
    params: dict[str, Any]
    active_sigmas: list[float] = field(default_factory=list)
    face_matches: list[FaceMatch] | None = None
    bindings: list[GroupBinding] | None = None


@dataclass
class _IdentityPlan:
    """The identities of one call: subjects (empty with bare embeddings), embeddings (N, id_dim) or None, and
    per person the target age, weight, scale and identity window (as given, and as the σ window injected)."""

    subjects: list[SubjectRef]
    embeds: torch.Tensor | None
    ages: list[float | None]
    weights: list[float]
    per_slot: list[float]
    windows: list[IdentityWindow]
    sigma_windows: list[IdentityWindow] = field(default_factory=list)

    @property
    def n(self) -> int:
        return 0 if self.embeds is None else self.embeds.shape[-2]


def check_flux_folder(path: str | Path) -> Path:
    """Raise ModelFolderError unless ``path`` is a FLUX checkpoint in diffusers format."""
    path = Path(path)
    expected = ["model_index.json", *[f"{name}/" for name in FLUX_FOLDERS]]
    if not path.is_dir():
        raise ModelFolderError(str(path), expected, what="FLUX model")
    missing = [e for e in expected if not (path / e.rstrip("/")).exists()]
    if missing:
        raise ModelFolderError(str(path), missing, what="FLUX model")
    return path


def check_adapter_folder(path: str | Path) -> Path:
    """``path`` as a Path when it holds an adapter's config and weights, else ModelFolderError naming what is missing."""
    path = Path(path)
    expected = ["config.json", "diffusion_pytorch_model.safetensors"]
    if not path.is_dir() or any(not (path / e).exists() for e in expected):
        missing = expected if not path.is_dir() else [e for e in expected if not (path / e).exists()]
        raise ModelFolderError(str(path), missing, what="IdGlow adapter")
    return path


class IdGlowPipeline(FluxPipeline):
    """FLUX + IdGlow identity adapter. Components as FluxPipeline's, plus ``adapter`` (an IdGlowAdapter) and
    an optional ``face_analyzer`` (any FaceAnalyzer; not saved with the pipeline)."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->transformer->vae"
    _optional_components = ["image_encoder", "feature_extractor", "adapter"]
    # The adapter is small and runs inside the transformer's forward, so it stays on the execution device.
    _exclude_from_cpu_offload = ["adapter"]

    def __init__(
        self,
        scheduler,
        vae,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        transformer,
        adapter: IdGlowAdapter | None = None,
        image_encoder=None,
        feature_extractor=None,
        face_analyzer: FaceAnalyzer | None = None,
    ):
        super().__init__(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self.register_modules(adapter=adapter)
        self.face_analyzer = face_analyzer
        if adapter is not None and transformer is not None:
            adapter.attach(transformer)

    def encode_prompt(self, *args, **kwargs):
        """FluxPipeline's, holding ``TOKENIZER_LOCK``: pipelines in other threads share these tokenizers."""
        with TOKENIZER_LOCK:
            return super().encode_prompt(*args, **kwargs)

    # --- loading ----------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        adapter: IdGlowAdapter | str | Path | None = None,
        face_analyzer: FaceAnalyzer | None = None,
        **kwargs,
    ) -> IdGlowPipeline:
        """Load from local folders only: a FLUX checkpoint in diffusers format (or a saved IdGlowPipeline)
        and, unless the folder holds one, an adapter folder (config.json + safetensors)."""
        path = check_flux_folder(pretrained_model_name_or_path)
        kwargs.setdefault("local_files_only", True)
        if isinstance(adapter, (str, Path)):
            adapter = IdGlowAdapter.from_pretrained(
                str(check_adapter_folder(adapter)), torch_dtype=kwargs.get("torch_dtype")
            )
        if adapter is not None:
            kwargs["adapter"] = adapter
        pipe = super().from_pretrained(str(path), **kwargs)
        pipe.face_analyzer = face_analyzer
        if pipe.adapter is None:
            logger.warning("%s holds no IdGlow adapter and none was given: identity injection is off", path)
        return pipe

    # --- inputs -----------------------------------------------------------------------------------------

    def check_idglow_inputs(
        self,
        subjects: Sequence[SubjectRef] | None,
        subject_embeds: torch.Tensor | None,
        task: str,
        id_scale: float | Sequence[float],
        id_window: IdentityWindow | tuple[float, float] | None,
        num_images: int,
        adapter: IdGlowAdapter | None = None,
        target_ages: Sequence[float | None] | None = None,
        window_coordinate: str = "sigma",
    ) -> None:
        """Raise ValueError (InputError for the group rules of :func:`validate_group`) naming a bad input."""
        adapter = adapter if adapter is not None else self.adapter
        validate_task(task)
        if subjects is not None and subject_embeds is not None:
            raise ValueError("pass either `subjects` or `subject_embeds`, not both")
        if subjects is not None and target_ages is not None:
            raise ValueError("`target_ages` goes with `subject_embeds`; with `subjects` set SubjectRef.target_age")
        if subjects:
            validate_group(subjects, task)
        n = len(subjects) if subjects is not None else (0 if subject_embeds is None else subject_embeds.shape[-2])
        if subject_embeds is not None:
            if target_ages is not None and len(target_ages) != n:
                raise ValueError(f"target_ages has {len(target_ages)} values for {n} subjects")
            refs = [SubjectRef(image=None, target_age=a) for a in (target_ages or [None] * n)]
            validate_group(refs, "fusion" if target_ages is None else task, allow_empty=True)
        if n and adapter is None:
            raise ValueError("subjects were given, but this pipeline has no IdGlow adapter")
        if subjects and self.face_analyzer is None:
            raise ValueError("`subjects` need a face_analyzer on the pipeline; pass `subject_embeds` instead")
        scales = [id_scale] if isinstance(id_scale, (int, float)) else list(id_scale)
        if not isinstance(id_scale, (int, float)) and len(scales) != n:
            raise ValueError(f"id_scale has {len(scales)} per-person values for {n} subjects")
        if any(not float(v) >= 0.0 for v in scales):
            raise ValueError(f"id_scale must be >= 0 (0 turns a person's identity off); got {id_scale}")
        if num_images < 1:
            raise ValueError(f"num_images={num_images} must be at least 1")
        if id_window is not None and not isinstance(id_window, IdentityWindow):
            IdentityWindow(*id_window)  # raises with the bad bound named
        if window_coordinate not in WINDOW_COORDINATES:
            raise ValueError(f"window_coordinate={window_coordinate!r}; expected one of {', '.join(WINDOW_COORDINATES)}")

    # --- subjects ---------------------------------------------------------------------------------------

    def encode_subjects(self, subjects: Sequence[SubjectRef]) -> torch.Tensor:
        """Detect each subject's face (largest, or ``face_index``) and stack the embeddings (N, id_dim)."""
        embeddings = []
        for slot, subject in enumerate(subjects):
            faces = sort_largest_first(self.face_analyzer.detect(to_rgb_array(subject.image)))
            if not faces:
                raise NoFaceError(slot, subject.source)
            index = 0 if subject.face_index is None else subject.face_index
            if not 0 <= index < len(faces):
                raise ValueError(f"subject {slot + 1}: face_index={index}, but the photo has {len(faces)} face(s)")
            if faces[index].embedding is None:
                raise ValueError(f"the face analyzer gave no embedding for subject {slot + 1}")
            embeddings.append(torch.as_tensor(np.asarray(faces[index].embedding), dtype=torch.float32))
        return torch.stack(embeddings)

    def match_generated(self, images: list, reference_embeds: torch.Tensor) -> list[FaceMatch] | None:
        """Per image, the Hungarian identity match of its faces to the subjects (None without a face analyzer)."""
        bindings = self.bind_generated(images, reference_embeds)
        return None if bindings is None else [b.match for b in bindings]

    def bind_generated(self, images: list, reference_embeds: torch.Tensor,
                       positions: Sequence[int] | None = None) -> list[GroupBinding] | None:
        """Per image, the faces found once and bound to the subjects (``bind_group``): the identity match, and
        with ``positions`` (each person's place, 1 = leftmost) whose face stands in each person's place.
        None without a face analyzer."""
        if self.face_analyzer is None or reference_embeds is None:
            return None
        refs = [e.numpy() for e in reference_embeds.float().cpu()]
        threshold = getattr(self.face_analyzer, "same_person_threshold", None)  # else the embedding size's
        return [bind_group(self.face_analyzer.detect(to_rgb_array(img)), refs, positions=positions,
                           min_similarity=threshold) for img in images]

    @staticmethod
    def check_positions(positions: Sequence[int] | None, num_subjects: int) -> None:
        """Raise ValueError unless ``positions`` gives each of ``num_subjects`` people one place 1..N."""
        if positions is not None and sorted(positions) != list(range(1, num_subjects + 1)):
            raise ValueError(f"subject_positions={list(positions)} must give each of the {num_subjects} "
                             f"subjects one place 1..{num_subjects}")

    # --- call -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | None = None,
        subjects: Sequence[SubjectRef] | None = None,
        task: str = "fusion",
        id_scale: float | Sequence[float] = 1.0,
        id_window: IdentityWindow | tuple[float, float] | None = None,
        num_images: int = 1,
        seed: int | None = None,
        subject_embeds: torch.Tensor | None = None,
        adapter: IdGlowAdapter | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 28,
        guidance_scale: float = 3.5,
        analyze_faces: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        output_type: str = "pil",
        generator: torch.Generator | list[torch.Generator] | None = None,
        id_profile: str | None = None,
        target_ages: Sequence[float | None] | None = None,
        window_coordinate: str = "sigma",
        subject_positions: Sequence[int] | None = None,
        **flux_kwargs,
    ) -> IdGlowOutput:
        """Generate ``num_images`` group images of ``subjects`` (slot order = identity order).

        task: "fusion" (identity always on) or "age": a person with a target age gets the age window
        σ ∈ [0.3, 0.6], a person without one keeps their age and their identity stays on at every step.
        ``id_window`` overrides the task's window (for the people with a target age, in the age task), its bounds
        read in ``window_coordinate``: "sigma" (default), "one_minus_sigma" or "step_fraction" (``sigma_window``).
        ``id_profile="linear"``: identity full on the window's clean side, fading to 0 at its noisy edge.
        id_scale: global, or one per subject (times each SubjectRef.weight); ``target_ages``: with ``subject_embeds``.
        ``subject_positions``: each person's place (1 = leftmost) as the prompt puts them, for ``bindings``.

        generator: a torch.Generator or one per image, as in FluxPipeline; without it image i uses a fresh
        generator seeded with ``seed + i`` (``seed`` random when not given). ``adapter`` uses another
        IdGlowAdapter for this call only (nothing shared is changed). Any other FluxPipeline argument passes
        through.
        """
        adapter = self._call_adapter(adapter)
        self.check_idglow_inputs(subjects, subject_embeds, task, id_scale, id_window, num_images, adapter,
                                 target_ages, window_coordinate)
        plan = self._identity_plan(subjects, subject_embeds, task, id_scale, id_window, id_profile,
                                   target_ages)  # 1. subjects → embeddings (once per call), windows, scales
        self.check_positions(subject_positions, plan.n)
        generator, seeds, seed_record = self._generators(generator, seed, num_images)  # 2. seeds
        flux_args = self._flux_arguments(prompt, height, width, num_inference_steps, guidance_scale, num_images,
                                         generator, output_type, callback_on_step_end,
                                         callback_on_step_end_tensor_inputs, flux_kwargs)
        plan.sigma_windows = self._sigma_windows(plan.windows, window_coordinate, flux_args)
        images, state = self._denoise(adapter, plan, flux_args)  # 3. FLUX's recipe, identities injected
        bindings = self.bind_generated(images, plan.embeds, subject_positions) if (  # 4. faces found once, bound
            analyze_faces and output_type == "pil" and plan.n) else None  # to the subjects and their places
        params = self._call_params(plan, flux_args, task, id_window, id_profile, seed_record, window_coordinate)
        params["subject_positions"] = None if subject_positions is None else [int(p) for p in subject_positions]
        return IdGlowOutput(images=list(images) if output_type == "pil" else images, seeds=seeds, params=params,
                            active_sigmas=list(state.active_sigmas) if state is not None else [],
                            face_matches=None if bindings is None else [b.match for b in bindings], bindings=bindings)

    # --- call steps -------------------------------------------------------------------------------------

    def _call_adapter(self, adapter: IdGlowAdapter | None) -> IdGlowAdapter | None:
        """The adapter of this call: the given one (checked against the transformer), else the pipeline's."""
        if adapter is None or adapter is self.adapter:
            return self.adapter
        adapter.attach(self.transformer)  # checks the shapes; the hooks are shared and attached once
        return adapter

    def _identity_plan(self, subjects, subject_embeds, task: str, id_scale, id_window, id_profile: str | None,
                       target_ages) -> _IdentityPlan:
        """Who is injected in this call, and how: embeddings, per-person windows, scales and weights."""
        subjects = list(subjects or [])
        if subjects:
            subject_embeds = self.encode_subjects(subjects)
        n = 0 if subject_embeds is None else subject_embeds.shape[-2]
        ages = [s.target_age for s in subjects] if subjects else list(target_ages or [None] * n)
        weights = [s.weight for s in subjects] if subjects else [1.0] * n
        per_slot = [float(id_scale)] * n if isinstance(id_scale, (int, float)) else [float(v) for v in id_scale]
        return _IdentityPlan(
            subjects=subjects, embeds=subject_embeds, ages=ages, weights=weights, per_slot=per_slot,
            windows=self._slot_windows(task, ages, id_window, id_profile),
        )

    def _denoise(self, adapter: IdGlowAdapter | None, plan: _IdentityPlan,
                 flux_args: dict[str, Any]) -> tuple[Any, InjectionState | None]:
        """FluxPipeline's denoising and decoding, with the plan's identities injected inside their windows."""
        if not plan.n or adapter is None:
            return super().__call__(**flux_args).images, None
        slot_scales = torch.tensor([a * w for a, w in zip(plan.per_slot, plan.weights)], dtype=torch.float32)
        with adapter.inject(plan.embeds, slot_scales, plan.sigma_windows or plan.windows,
                            sigma_source=self._schedule_sigma) as state:
            images = super().__call__(**flux_args).images
        return images, state

    def _call_params(self, plan: _IdentityPlan, flux_args: dict[str, Any], task: str, id_window,
                     id_profile: str | None, seed_record: dict, window_coordinate: str = "sigma") -> dict[str, Any]:
        """Every setting of the call, as the output records it."""
        task_window = self._task_window(task, id_window, id_profile)
        params = {
            "prompt": flux_args["prompt"], "task": task, "num_subjects": plan.n, "id_scale": plan.per_slot,
            "weights": plan.weights, "id_window": [task_window.sigma_lo, task_window.sigma_hi, task_window.ramp],
            "id_profile": task_window.profile, "slot_windows": [w.to_dict() for w in plan.windows],
            "window_coordinate": window_coordinate, "sigma_windows": [w.to_dict() for w in plan.sigma_windows],
            "target_ages": plan.ages,
            "labels": [s.label for s in plan.subjects] if plan.subjects else [None] * plan.n,
            "num_images": flux_args["num_images_per_prompt"], **seed_record,
            "height": flux_args["height"] or self.default_sample_size * self.vae_scale_factor,
            "width": flux_args["width"] or self.default_sample_size * self.vae_scale_factor,
            "num_inference_steps": flux_args["num_inference_steps"], "guidance_scale": flux_args["guidance_scale"],
        }
        if plan.subjects:  # the identity inputs as the face analyzer computed them (kept with the generation)
            params["subject_embeddings"] = [[round(float(v), 6) for v in e] for e in plan.embeds.float().cpu()]
            params["face_backend"] = face_backend_name(self.face_analyzer)
        return params

    # --- call helpers -----------------------------------------------------------------------------------

    @staticmethod
    def _window(id_window: IdentityWindow | tuple[float, float] | None) -> IdentityWindow | None:
        return id_window if isinstance(id_window, IdentityWindow) or id_window is None else IdentityWindow(*id_window)

    def _task_window(self, task: str, id_window, id_profile: str | None) -> IdentityWindow:
        """The window of the people the task acts on (everyone in fusion, those with a target age in age)."""
        return slot_windows(task, [0.0], self._window(id_window), id_profile)[0]

    def _slot_windows(self, task: str, ages: list, id_window, id_profile: str | None) -> list[IdentityWindow]:
        return slot_windows(task, ages, self._window(id_window), id_profile)

    def _sigma_windows(self, windows: list[IdentityWindow], coordinate: str,
                       flux_args: dict[str, Any]) -> list[IdentityWindow]:
        """``windows`` read in ``coordinate`` as σ windows of this call's schedule (its size sets FLUX's shift)."""
        size = self.vae_scale_factor * 2
        height = flux_args["height"] or self.default_sample_size * self.vae_scale_factor
        width = flux_args["width"] or self.default_sample_size * self.vae_scale_factor
        shift = schedule_shift(self.scheduler.config, (int(height) // size) * (int(width) // size))
        return [sigma_window(w, coordinate, shift) for w in windows]

    def _schedule_sigma(self) -> torch.Tensor | None:
        """σ of the denoising step in progress, in float32 from the scheduler (the transformer's ``timestep``
        argument has been cast to the latents' dtype, which shifts window edges in bfloat16)."""
        t = self.current_timestep
        if t is None:
            return None
        timesteps, sigmas = self.scheduler.timesteps, getattr(self.scheduler, "sigmas", None)
        if sigmas is not None and timesteps is not None:
            hits = (timesteps.detach().to("cpu", torch.float32) == float(t)).nonzero()
            if len(hits):
                return sigmas[int(hits[0])].to(torch.float32)
        return torch.as_tensor(t, dtype=torch.float32) / 1000.0

    @staticmethod
    def _generators(generator, seed: int | None, num_images: int) -> tuple[list | torch.Generator, list, dict]:
        """The generators of a call, the seed of each image and what the output records about them.

        Given generators are used as they are; their ``initial_seed()`` is recorded, which reproduces an image
        only if the generator was freshly seeded with ``manual_seed`` (and, for one generator shared by several
        images, only with the same ``num_images``)."""
        if generator is None:
            seed = secrets.randbelow(2**31 - 1) if seed is None else int(seed)
            seeds = [seed + i for i in range(num_images)]
            return [torch.Generator("cpu").manual_seed(s) for s in seeds], seeds, {"seed": seed,
                                                                                   "seed_source": "seed"}
        if seed is not None:
            raise ValueError("pass either `seed` or `generator`, not both")
        gens = list(generator) if isinstance(generator, (list, tuple)) else [generator]
        if len(gens) not in (1, num_images):
            raise ValueError(f"{len(gens)} generators for num_images={num_images}; give one, or one per image")
        initial = [int(g.initial_seed()) for g in gens]
        seeds = initial if len(gens) == num_images else initial * num_images
        shared = len(gens) == 1 and num_images > 1
        record = {"seed": initial[0], "seed_source": "shared generator" if shared else "generator"}
        return (gens if isinstance(generator, (list, tuple)) else generator), seeds, record

    def _flux_arguments(self, prompt, height, width, steps, guidance_scale, num_images, generator, output_type,
                        callback, callback_inputs, flux_kwargs) -> dict[str, Any]:
        if self.tokenizer_2 is not None:
            flux_kwargs.setdefault("max_sequence_length", min(512, self.tokenizer_2.model_max_length))
        if prompt is None and flux_kwargs.get("prompt_embeds") is None:
            prompt = ""
        return dict(
            prompt=prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance_scale,
            num_images_per_prompt=num_images, generator=generator, output_type=output_type,
            callback_on_step_end=callback, callback_on_step_end_tensor_inputs=callback_inputs or ["latents"],
            **flux_kwargs,
        )
