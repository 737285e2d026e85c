"""Run a benchmark manifest through a pipeline under several configurations and score every image.

Configurations (compared in one run, on the same cases, prompts and seeds):

- ``base``: the FLUX model alone, no identity injected;
- ``always_on``: identity injected at every step (σ window [0, 1]);
- ``idglow``: identity injected inside the task's window (``fusion``: always on; ``age``: σ ∈ [0.3, 0.6]),
  or inside ``EvalSettings.window`` when given;
- ``linear_decay`` (on request): the same window with the linear strength profile, full at its low edge and
  falling to 0 at its high edge (``IdGlowPipeline(..., id_profile="linear")``).

With bad cases (``EvalRunner(..., badcases=...)``), every case whose prompt is composed is run a second time
with its prompt composed again with the retrieved bad cases (same subjects, seeds and configurations), so that
the report can give the shaped − plain difference of each metric. Cases with a fixed manifest prompt are left
out of that comparison, with the reason.

Outputs are cached per case and configuration under ``out/cases/<case>/`` (``<config>.json`` and
``<config>_<seed>.png``; the shaped run's files start with ``shaped-``): a re-run skips every image whose
generation settings, prompt included, are unchanged, and only re-scores when the scoring settings changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from idglow.errors import InputError, NoFaceError
from idglow.eval.manifest import EvalCase, Manifest, SubjectResolver
from idglow.eval.metrics import age_errors, identity_metrics, mean_or_none
from idglow.eval.vocabulary import (  # noqa: F401 (re-exported: the runner's public vocabulary)
    CONFIG_TITLES,
    CONFIGS,
    DEFAULT_CONFIGS,
    IMAGE_METRICS,
    LOWER_IS_BETTER,
    config_window,
    run_names,
    split_run,
)
from idglow.faces.match import analyzer_match_threshold
from idglow.faces.memo import RememberedFaces
from idglow.schedule import WINDOW_COORDINATES, IdentityWindow

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
#: Version of the binding metrics in the scoring key (records scored before them are scored again).
BINDING_VERSION = 1
#: Why a case is left out of the shaped-vs-plain comparison.
FIXED_PROMPT_REASON = "the manifest gives this case a fixed prompt; bad cases shape only composed prompts"
NO_BADCASE_REASON = ("no bad case applies to this case (none given, max_badcases=0, or only age failures for a "
                     "case without target ages)")
UNCHANGED_PROMPT_REASON = "the bad cases left the prompt unchanged (their constraints did not fit the token limits)"


@dataclass
class EvalSettings:
    """How a benchmark is run and scored.

    configs: which configurations to compare (subset of ``CONFIGS``; default ``base``, ``always_on``, ``idglow``).
    window: σ window of the ``idglow`` configuration (default: the task's preset).
    images_per_case: images per case and configuration (default: the manifest's).
    limit: run only the first ``limit`` cases.
    match_threshold: a generated face is assigned to a subject only at or above this cosine similarity
        (inside the Hungarian assignment; default: the analyzer's same-person threshold, see
        ``idglow.faces.SAME_PERSON_THRESHOLDS``).
    duplicate_threshold: a second face at or above this similarity to a subject makes it a duplicate
        (default: the match threshold).
    num_resamples / confidence / bootstrap_seed: bootstrap confidence intervals over cases.
    max_badcases: how many retrieved bad cases shape one prompt (when the runner is given bad cases).
    window_coordinates: what the window's bounds mean (``idglow.schedule.sigma_window``): ``sigma`` (default),
        ``one_minus_sigma`` or ``step_fraction``. With several, ``idglow`` and ``linear_decay`` run once per
        coordinate (``runs``: ``idglow@sigma``, ``idglow@step_fraction``, …), side by side on the same cases.
    """

    configs: tuple[str, ...] = DEFAULT_CONFIGS
    num_inference_steps: int = 28
    height: int = 1024
    width: int = 1024
    guidance_scale: float = 3.5
    id_scale: float = 1.0
    window: tuple[float, float] | None = None
    images_per_case: int | None = None
    limit: int | None = None
    match_threshold: float | None = None
    duplicate_threshold: float | None = None
    num_resamples: int = 1000
    confidence: float = 0.95
    bootstrap_seed: int = 0
    max_badcases: int = 4
    window_coordinates: tuple[str, ...] = ("sigma",)

    def __post_init__(self) -> None:
        self.configs = tuple(self.configs)
        self.window_coordinates = tuple(self.window_coordinates)
        bad = [c for c in self.window_coordinates if c not in WINDOW_COORDINATES]
        if bad or not self.window_coordinates or len(set(self.window_coordinates)) != len(self.window_coordinates):
            raise InputError(f"window coordinates {list(self.window_coordinates)}: give each of "
                             f"{', '.join(WINDOW_COORDINATES)} at most once")
        unknown = [c for c in self.configs if c not in CONFIGS]
        if unknown or not self.configs:
            raise InputError(f"unknown configurations {unknown or '(none)'}; choose from {', '.join(CONFIGS)}")
        if len(set(self.configs)) != len(self.configs):
            raise InputError(f"configurations listed twice: {list(self.configs)}")
        for name in ("num_inference_steps", "height", "width", "num_resamples"):
            if getattr(self, name) < 1:
                raise InputError(f"{name}={getattr(self, name)} must be at least 1")
        if self.images_per_case is not None and self.images_per_case < 1:
            raise InputError(f"images_per_case={self.images_per_case} must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"limit={self.limit} must be at least 1")
        if not 0 < self.confidence < 1:
            raise InputError(f"confidence={self.confidence} must be between 0 and 1")
        if self.max_badcases < 0:
            raise InputError(f"max_badcases={self.max_badcases} must be >= 0")
        if self.window is not None:
            IdentityWindow(*self.window)  # InputError naming the bad bound
            self.window = tuple(float(v) for v in self.window)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["configs"] = list(self.configs)
        data["window"] = list(self.window) if self.window else None
        data["window_coordinates"] = list(self.window_coordinates)
        return data

    @property
    def runs(self) -> tuple[str, ...]:
        """What is generated per case: the configurations, a windowed one once per window coordinate when
        several are compared (``idglow.eval.vocabulary.run_names``)."""
        return run_names(self.configs, self.window_coordinates)

    def coordinate_of(self, run: str) -> str | None:
        """The window coordinate of a run (None: its configuration has no window coordinate)."""
        return split_run(run, self.window_coordinates)[1]


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class CaseInputs:
    """What every configuration of one case shares.

    variant: ``"plain"``, or ``"shaped"`` for the prompt composed again with bad cases (its files are cached
    apart). positions: each person's place left to right as the prompt states it (None: the prompt gives no
    places), for binding. truth: each person's embedding in the case's ground-truth photo (None: no photo). reference_text: the text the CLIP score compares the images with (default: ``prompt_text``); a
    shaped run is scored against its plain prompt, so that both runs are measured against the same text.
    """

    case: EvalCase
    subjects: list
    embeds: Any  # torch.Tensor (N, id_dim)
    prompt_kwargs: dict[str, str]
    prompt_text: str
    prompt_source: str
    prompt_fidelity: float | None
    fidelity_violations: list[str] = field(default_factory=list)
    variant: str = "plain"
    reference_text: str | None = None
    positions: list[int] | None = None
    truth: list | None = None

    @property
    def scored_text(self) -> str:
        return self.prompt_text if self.reference_text is None else self.reference_text


@dataclass
class ShapedCase:
    """A case's prompt composed again with the bad cases retrieved for it (``inputs``), or why the case is left
    out of the comparison (``skipped``). constraints: the sentences the bad cases added to the prompt."""

    inputs: CaseInputs | None
    badcase_ids: list = field(default_factory=list)
    failure_types: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    skipped: str | None = None


def encode_references(analyzer, subjects: Sequence) -> Any:
    """Reference embeddings (N, id_dim) in slot order: each subject's largest face, or its ``face_index``."""
    import torch

    from idglow.faces.base import sort_largest_first

    embeddings = []
    for slot, subject in enumerate(subjects):
        faces = sort_largest_first(analyzer.detect(subject.image))
        if not faces:
            raise NoFaceError(slot, subject.source)
        index = 0 if subject.face_index is None else subject.face_index
        if not 0 <= index < len(faces):
            raise InputError(f"subject {slot + 1}: face_index={index}, but the photo has {len(faces)} face(s)")
        embeddings.append(torch.as_tensor(np.asarray(faces[index].embedding), dtype=torch.float32))
    return torch.stack(embeddings)


def _named_badcases(badcases: Sequence) -> list:
    """The bad cases, those without an id named by their position in the list (``#1``, ``#2``, …)."""
    return [bc if bc.id is not None else replace(bc, id=f"#{i + 1}") for i, bc in enumerate(badcases)]


def _public(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The cached records as the report shows them (without their cache keys)."""
    return {c: {k: v for k, v in r.items() if k not in ("generation_key", "scoring_key")} for c, r in results.items()}


NO_PLACES_REASON = ("no prompt places its people (a composed prompt, or a literal one with 'the first person from the "
                    "left' markers, places them)")
FEW_FACES_REASON = ("no generated image shows as many faces as the prompt places people, so nobody's place could be "
                    "read")
NO_TRUTH_REASON = "no case gives a ground-truth photo ('ground_truth' in the manifest)"


def _has_value(row: dict[str, Any], metric: str) -> bool:
    return any(r.get(metric) is not None for r in row["results"].values())


def binding_metrics(binding) -> dict[str, float | None]:
    """Per-image binding metrics of a ``GroupBinding``: ``binding_accuracy`` and ``swap_rate`` (None when the
    prompt gives no places), mean ``confusion`` over matched people and mean ``copy_paste`` over people with a
    ground truth (None where none)."""
    n = len(binding.match.similarity)
    return {
        "binding_accuracy": binding.binding_accuracy,
        "swap_rate": None if binding.swaps is None or not n else binding.swaps / n,
        "confusion": mean_or_none(binding.confusion),
        "copy_paste": mean_or_none(binding.copy_paste),
    }


def prompt_places(group_prompt) -> list[int] | None:
    """Each person's place (1 = leftmost) as a composed ``GroupPrompt`` states it, in slot order (None when its
    persons do not give every slot a distinct position)."""
    by_slot = {p.slot: p.position for p in group_prompt.persons}
    n = len(by_slot)
    positions = [by_slot.get(j) for j in range(n)]
    return positions if n and sorted(p or 0 for p in positions) == list(range(1, n + 1)) else None


def literal_positions(case: EvalCase) -> list[int] | None:
    """The places a manifest's literal prompt gives (``prompt_positions`` with the subjects' labels)."""
    from idglow.faces.scoring import prompt_positions

    labels = [s.label for s in case.subjects]
    found = prompt_positions(case.prompt or "", labels) if all(labels) else None
    return found or prompt_positions(case.prompt or "", None, case.num_subjects)


def _coordinate_key(coordinate: str | None) -> dict[str, str]:
    """The window coordinate's part of a generation key (none for σ, so that records made before the
    coordinate existed stay valid)."""
    return {} if coordinate in (None, "sigma") else {"window_coordinate": coordinate}


def schedule_of(output, coordinate: str | None) -> dict[str, Any]:
    """How a pipeline output's identity was scheduled: the window coordinate of its run (None: no window
    coordinate), each person's σ window as the gate read it, and the σ of every step at which any identity
    was injected (``active_sigmas``, rounded to 1e-4) with their count."""
    sigmas = [round(float(v), 4) for v in output.active_sigmas]
    return {"window_coordinate": coordinate, "sigma_windows": output.params.get("sigma_windows"),
            "active_sigmas": sigmas, "active_steps": len(sigmas)}


@dataclass
class EvalRun:
    """What a run produced, for ``idglow.eval.report.build_report``: the manifest, one row per case and how
    they were made and scored; ``processes``: each process's rank and the ids of the cases it ran."""

    manifest: Manifest
    case_rows: list[dict[str, Any]]
    settings: EvalSettings
    model_info: dict[str, Any]
    task: str
    skipped: dict[str, str]
    stats: dict[str, int]
    analyzer: dict[str, Any]
    badcases: dict[str, Any] | None = None
    processes: list[dict[str, Any]] | None = None


class EvalRunner:
    """Runs manifests on one pipeline. ``pipe`` needs an IdGlow adapter unless only ``base`` is run;
    ``analyzer`` finds and embeds faces (reference photos and generated images alike). ``clip`` /
    ``aesthetic`` are optional scorers (``ClipScorer`` / ``AestheticScorer``); their metrics are reported as
    skipped without them. ``badcases`` (a list of ``Badcase``, possibly empty) turns on the shaped-vs-plain
    comparison; ``badcases_source`` names where they came from in the report."""

    def __init__(self, pipe, analyzer, settings: EvalSettings | None = None, *, clip=None, aesthetic=None,
                 model_info: dict[str, Any] | None = None, progress: bool = True,
                 badcases: Sequence | None = None, badcases_source: str | None = None):
        self.pipe = pipe
        self.analyzer = analyzer
        self.settings = settings or EvalSettings()
        self.clip = clip
        self.aesthetic = aesthetic
        self.model_info = dict(model_info or {})
        self.progress = progress
        self.badcases = None if badcases is None else _named_badcases(badcases)
        self.badcases_source = badcases_source
        if any(c != "base" for c in self.settings.configs) and getattr(pipe, "adapter", None) is None:
            raise InputError("every configuration but base needs a pipeline with an IdGlow adapter")
        # the reference photos are analysed for embeddings and again for the prompt's face attributes
        self._references = RememberedFaces(analyzer, size=256)
        s = self.settings
        self.match_threshold = (s.match_threshold if s.match_threshold is not None
                                else analyzer_match_threshold(analyzer))
        self.duplicate_threshold = (s.duplicate_threshold if s.duplicate_threshold is not None
                                    else self.match_threshold)
        self.stats = {"generated": 0, "cached": 0, "rescored": 0}

    # --- per case ---------------------------------------------------------------------------------------

    def prepare_case(self, case: EvalCase, task: str, resolver: SubjectResolver, synthesizer) -> CaseInputs:
        from idglow.prompting import check_prompt_fidelity

        subjects = resolver.resolve_case(case)
        try:
            embeds = encode_references(self._references, subjects)
        except NoFaceError as err:
            spec = case.subjects[err.slot]
            raise InputError(f"case {case.id!r}: no face found in subject {err.slot + 1} ({spec.describe()})") from None
        except InputError as err:
            raise InputError(f"case {case.id!r}: {err}") from None
        truth = self.truth_of(case, resolver, embeds)
        if case.prompt is not None:
            return CaseInputs(case, subjects, embeds, {"prompt": case.prompt}, case.prompt, "manifest", None,
                              positions=literal_positions(case), truth=truth)
        group_prompt = synthesizer.compose(subjects, task=task, scene=case.scene)
        report = check_prompt_fidelity(group_prompt, subjects)
        return CaseInputs(
            case, subjects, embeds, group_prompt.pipeline_kwargs(), group_prompt.text, group_prompt.source,
            report.score, [v.message for v in report.violations], positions=prompt_places(group_prompt),
            truth=truth,
        )

    def truth_of(self, case: EvalCase, resolver: SubjectResolver, embeds) -> list | None:
        """Each person's embedding in the case's ground-truth photo (None without one)."""
        from idglow.faces.scoring import truth_embeddings

        photo = resolver.resolve_ground_truth(case)
        if photo is None:
            return None
        refs = [e.numpy() for e in embeds.float().cpu()]
        return truth_embeddings(self.analyzer, photo, refs, self.match_threshold)

    def shape_case(self, inputs: CaseInputs, task: str, synthesizer) -> ShapedCase:
        """The case's prompt composed again with the bad cases retrieved for it (same subjects and scene)."""
        from idglow.prompting import check_prompt_fidelity
        from idglow.prompting.badcases import failure_types_of, select_badcases

        case = inputs.case
        if case.prompt is not None:
            return ShapedCase(None, skipped=FIXED_PROMPT_REASON)
        chosen = select_badcases(self.badcases or (), task, case.num_subjects, case.target_ages,
                                 limit=self.settings.max_badcases)
        if not chosen:
            return ShapedCase(None, skipped=NO_BADCASE_REASON)
        shaped = synthesizer.compose(inputs.subjects, task=task, scene=case.scene, badcases=chosen)
        has_target_age = any(a is not None for a in case.target_ages)
        found = ShapedCase(None, [bc.id for bc in chosen], failure_types_of(chosen, has_target_age),
                           [c for c in shaped.constraints if c not in inputs.prompt_text])
        if shaped.pipeline_kwargs() == inputs.prompt_kwargs:
            return replace(found, skipped=UNCHANGED_PROMPT_REASON)
        fidelity = check_prompt_fidelity(shaped, inputs.subjects)
        found.inputs = replace(
            inputs, prompt_kwargs=shaped.pipeline_kwargs(), prompt_text=shaped.text, prompt_source=shaped.source,
            prompt_fidelity=fidelity.score, fidelity_violations=[v.message for v in fidelity.violations],
            variant="shaped", reference_text=inputs.prompt_text, positions=prompt_places(shaped),
        )
        return found

    def generation_key(self, inputs: CaseInputs, config: str, task: str, num_images: int) -> str:
        s = self.settings
        window = config_window(config, task, s)
        embeds = np.ascontiguousarray(inputs.embeds.float().cpu().numpy())
        return _digest({
            "version": RECORD_VERSION, "model": self.model_info, "config": config, "task": task,
            "window": None if window is None else [window.sigma_lo, window.sigma_hi, window.ramp],
            "id_scale": s.id_scale, "steps": s.num_inference_steps, "size": [s.height, s.width],
            "guidance": s.guidance_scale, "seed": inputs.case.seed, "num_images": num_images,
            "prompt": inputs.prompt_kwargs, "embeds": hashlib.sha256(embeds.tobytes()).hexdigest(),
            **_coordinate_key(s.coordinate_of(config)),
        })

    def scoring_key(self, inputs: CaseInputs) -> str:
        return _digest({
            "version": RECORD_VERSION, "analyzer": type(self.analyzer).__name__,
            "embedding_dim": self.analyzer.embedding_dim, "match": self.match_threshold,
            "duplicate": self.duplicate_threshold, "ages": inputs.case.target_ages,
            "clip": getattr(self.clip, "source", None) if self.clip else None,
            "aesthetic": getattr(self.aesthetic, "source", None) if self.aesthetic else None,
            "prompt": inputs.scored_text, "binding": BINDING_VERSION, "positions": inputs.positions,
            "truth": None if inputs.truth is None else _digest([None if t is None else t.tolist()
                                                               for t in inputs.truth]),
        })

    def generate(self, inputs: CaseInputs, config: str, task: str, num_images: int,
                 on_step=None) -> tuple[list, dict[str, Any]]:
        """The images of one case under one run (configuration, and window coordinate when it has one), and
        the schedule they were made with (``schedule_of``)."""
        s = self.settings
        window = config_window(config, task, s)
        kwargs: dict[str, Any] = dict(
            task=task, num_images=num_images, seed=inputs.case.seed, num_inference_steps=s.num_inference_steps,
            height=s.height, width=s.width, guidance_scale=s.guidance_scale, analyze_faces=False,
            callback_on_step_end=on_step, **inputs.prompt_kwargs,
        )
        if window is not None:
            kwargs.update(subject_embeds=inputs.embeds, id_scale=s.id_scale,
                          id_window=(window.sigma_lo, window.sigma_hi))
            if config.startswith("linear_decay"):
                kwargs["id_profile"] = "linear"
            kwargs["window_coordinate"] = s.coordinate_of(config) or "sigma"
            if task == "age":  # people without a target age keep their identity on at every step
                kwargs["target_ages"] = inputs.case.target_ages
        prompt = kwargs.pop("prompt")
        out = self.pipe(prompt, **kwargs)
        return out.images, schedule_of(out, s.coordinate_of(config))

    def score_images(self, images: list, inputs: CaseInputs, task: str) -> list[dict[str, Any]]:
        """Per-image metrics (see ``IMAGE_METRICS``); None where a metric is not available."""
        from idglow.faces.binding import bind_group

        refs = [e.numpy() for e in inputs.embeds.float().cpu()]
        targets = inputs.case.target_ages
        clip_scores = self.clip.score(images, [inputs.scored_text] * len(images)) if self.clip else None
        aesthetic = self.aesthetic.score(images) if self.aesthetic else None
        out = []
        for i, image in enumerate(images):
            faces = self.analyzer.detect(np.asarray(image.convert("RGB")))
            binding = bind_group(faces, refs, positions=inputs.positions, truth=inputs.truth,
                                 min_similarity=self.match_threshold, duplicate_similarity=self.duplicate_threshold)
            match = binding.match
            record: dict[str, Any] = identity_metrics(match)
            record.update(binding_metrics(binding))
            record["age_error"] = mean_or_none(age_errors(match, targets)) if task == "age" else None
            record["clip_score"] = clip_scores[i] if clip_scores else None
            record["aesthetic"] = aesthetic[i] if aesthetic else None
            record["num_faces"] = len(faces)
            record["face_ages"] = [None if f.age is None else round(float(f.age), 1) for f in faces]
            record["match"] = match.to_dict()
            record["binding"] = binding.to_dict()
            out.append(record)
        return out

    def run_config(self, inputs: CaseInputs, config: str, task: str, num_images: int, case_dir: Path,
                   on_step=None) -> dict[str, Any]:
        """Generate (or reuse) and score one case under one configuration; the record is cached on disk."""
        from PIL import Image

        stem = config if inputs.variant == "plain" else f"{inputs.variant}-{config}"
        record_path = case_dir / f"{stem}.json"
        gen_key = self.generation_key(inputs, config, task, num_images)
        score_key = self.scoring_key(inputs)
        seeds = [inputs.case.seed + i for i in range(num_images)]
        files = [f"{stem}_{seed}.png" for seed in seeds]
        cached, schedule = None, None
        if record_path.is_file():
            try:
                cached = json.loads(record_path.read_text())
            except ValueError:
                logger.warning("ignoring unreadable cached record %s", record_path)
        if cached and cached.get("generation_key") == gen_key and all((case_dir / f).is_file() for f in files):
            if cached.get("scoring_key") == score_key:
                self.stats["cached"] += 1
                return cached
            images = [Image.open(case_dir / f).convert("RGB") for f in files]
            schedule = cached.get("schedule")
            self.stats["rescored"] += 1
        else:
            images, schedule = self.generate(inputs, config, task, num_images, on_step=on_step)
            case_dir.mkdir(parents=True, exist_ok=True)
            for image, name in zip(images, files):
                image.save(case_dir / name)
            self.stats["generated"] += 1
        per_image = self.score_images(images, inputs, task)
        record: dict[str, Any] = {
            "config": config, "case": inputs.case.id, "generation_key": gen_key, "scoring_key": score_key,
            "images": files, "seeds": seeds, "per_image": per_image, "schedule": schedule,
        }
        for metric in IMAGE_METRICS:
            record[metric] = mean_or_none([r[metric] for r in per_image])
        record_path.write_text(json.dumps(record, indent=2))
        return record

    # --- whole manifest ---------------------------------------------------------------------------------

    def run(self, manifest: Manifest, out_dir: str | Path, *, state=None) -> EvalRun:
        """Run every selected case under every configuration (with bad cases, each composed prompt a second time
        shaped by them); images and per-configuration records are cached under ``out_dir/cases``. Returns the
        run (``idglow.eval.report.report_of_run`` builds its report).

        ``state``: accelerate's ``PartialState`` of a run launched on several processes (see
        ``idglow.eval.distributed``); each process then runs its shard of the cases and every process gets back
        the rows of all of them, in the manifest's order."""
        from idglow.eval.distributed import gather_shards, shard_of

        s = self.settings
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cases = manifest.select(s.limit)
        num_images = s.images_per_case or manifest.images_per_case
        if state is None or state.num_processes <= 1:
            case_rows = self.run_cases(manifest, cases, num_images, out)
            stats, shards = dict(self.stats), [{"rank": 0, "cases": [c.id for c in cases]}]
        else:
            mine = shard_of(cases, state.process_index, state.num_processes)
            case_rows, stats, shards = gather_shards(
                state, lambda: (self.run_cases(manifest, mine, num_images, out, show=state.is_main_process),
                                self.stats), [c.id for c in cases])
        return EvalRun(
            manifest, case_rows, s, model_info=self.model_info, task=manifest.task,
            skipped=self.skipped_reasons(manifest.task, case_rows), stats=stats,
            analyzer={"name": type(self.analyzer).__name__, "embedding_dim": self.analyzer.embedding_dim,
                      "match_threshold": self.match_threshold, "duplicate_threshold": self.duplicate_threshold},
            badcases=self._badcases_info(), processes=shards,
        )

    def run_cases(self, manifest: Manifest, cases: Sequence[EvalCase], num_images: int, out: Path, *,
                  show: bool = True) -> list[dict[str, Any]]:
        """One report row per case of ``cases`` (generated, or read back from ``out/cases/<case>/``); ``show``:
        whether this process draws the progress bar."""
        from tqdm.auto import tqdm

        from idglow.prompting import PromptSynthesizer

        s = self.settings
        resolver = SubjectResolver(self.analyzer, manifest.root)
        synthesizer = PromptSynthesizer.from_pipeline(self.pipe, face_analyzer=self._references,
                                                      max_badcases=s.max_badcases)
        case_rows = []
        runs = len(s.runs) * (1 if self.badcases is None else 2)
        bar = tqdm(total=len(cases) * runs, desc=f"eval {manifest.name}", unit="image set",
                   disable=not (self.progress and show))
        try:
            for case in cases:
                inputs = self.prepare_case(case, manifest.task, resolver, synthesizer)
                case_dir = out / "cases" / case.id
                row = self.case_row(inputs, self._run_configs(inputs, manifest.task, num_images, case_dir, bar))
                if self.badcases is not None:
                    row["shaped"] = self._run_shaped(inputs, manifest.task, synthesizer, num_images, case_dir, bar)
                case_rows.append(row)
        finally:
            bar.close()
        return case_rows

    def _run_configs(self, inputs: CaseInputs, task: str, num_images: int, case_dir: Path, bar) -> dict[str, Any]:
        results = {}
        for config in self.settings.runs:
            bar.set_postfix_str(f"{inputs.case.id} {config}" + ("" if inputs.variant == "plain" else " shaped"))
            results[config] = self.run_config(inputs, config, task, num_images, case_dir)
            bar.update(1)
        return results

    @staticmethod
    def case_row(inputs: CaseInputs, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """One case of the report: its group, its (plain) prompt and the record of every configuration."""
        case = inputs.case
        return {
            "id": case.id,
            "num_subjects": case.num_subjects,
            "subjects": [sp.describe() for sp in case.subjects],
            "target_ages": case.target_ages,
            "scene": case.scene,
            "prompt": inputs.prompt_text,
            "prompt_source": inputs.prompt_source,
            "prompt_fidelity": inputs.prompt_fidelity,
            "prompt_violations": inputs.fidelity_violations,
            "positions": inputs.positions,
            "ground_truth": case.ground_truth if isinstance(case.ground_truth, str | None) else list(case.ground_truth),
            "results": _public(results),
        }

    def _run_shaped(self, inputs: CaseInputs, task: str, synthesizer, num_images: int, case_dir: Path,
                    bar) -> dict[str, Any]:
        """The case's shaped run (or why it has none): which bad cases and failure types shaped the prompt,
        both prompt texts, and the record of every configuration."""
        shaped = self.shape_case(inputs, task, synthesizer)
        entry: dict[str, Any] = {
            "skipped": shaped.skipped, "badcase_ids": shaped.badcase_ids, "failure_types": shaped.failure_types,
            "constraints": shaped.constraints, "plain_prompt": inputs.prompt_text, "shaped_prompt": None,
            "prompt_fidelity": None, "prompt_violations": [], "results": {},
        }
        if shaped.inputs is None:
            bar.update(len(self.settings.runs))
            return entry
        results = self._run_configs(shaped.inputs, task, num_images, case_dir, bar)
        entry.update(shaped_prompt=shaped.inputs.prompt_text, prompt_fidelity=shaped.inputs.prompt_fidelity,
                     prompt_violations=shaped.inputs.fidelity_violations, results=_public(results))
        return entry

    def _badcases_info(self) -> dict[str, Any] | None:
        """What the report says about the bad cases given (None: no comparison was run)."""
        from idglow.prompting.badcases import FAILURE_TYPES

        if self.badcases is None:
            return None
        present = {t for bc in self.badcases for t in bc.failure_types}
        return {"source": self.badcases_source, "num_badcases": len(self.badcases),
                "failure_types": [t for t in FAILURE_TYPES if t in present]}

    def _no_age_error_reason(self, case_rows: Sequence[dict[str, Any]]) -> str:
        face_ages = [a for r in case_rows for c in r["results"] for im in r["results"][c]["per_image"]
                     for a in im["face_ages"]]
        if not face_ages:
            return "no face was found in the generated images"
        if all(a is None for a in face_ages):
            return (f"the face analyzer ({type(self.analyzer).__name__}) gives no age estimates; use --faces dlib "
                    "(dlib's age network) or an insightface pack with genderage.onnx")
        return "no generated face was matched to a subject"

    def skipped_reasons(self, task: str, case_rows: Sequence[dict[str, Any]]) -> dict[str, str]:
        """Why a metric has no value in this run (metrics not listed were measured)."""
        reasons: dict[str, str] = {}
        if self.clip is None:
            reasons["clip_score"] = "no CLIP weights given (--clip DIR)"
        if self.aesthetic is None:
            reasons["aesthetic"] = "no aesthetic predictor weights given (--aesthetic DIR)"
        if task != "age":
            reasons["age_error"] = "not an age benchmark"
        elif all(r["results"][c]["age_error"] is None for r in case_rows for c in r["results"]):
            reasons["age_error"] = self._no_age_error_reason(case_rows)
        if not any(_has_value(r, "binding_accuracy") for r in case_rows):
            placed = any(r.get("positions") for r in case_rows)
            reasons["binding_accuracy"] = reasons["swap_rate"] = FEW_FACES_REASON if placed else NO_PLACES_REASON
        if not any(_has_value(r, "confusion") for r in case_rows):
            reasons["confusion"] = "no case has two or more people with a matched face"
        if not any(_has_value(r, "copy_paste") for r in case_rows):
            reasons["copy_paste"] = NO_TRUTH_REASON
        if all(r["prompt_fidelity"] is None for r in case_rows):
            reasons["prompt_fidelity"] = "every case gives a literal prompt"
        return reasons
