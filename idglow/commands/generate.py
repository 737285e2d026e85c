"""``idglow generate``: group photos from reference portraits, written as PNG + JSON sidecar per image."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from idglow.commands.common import (
    add_model_arguments,
    add_subject_arguments,
    build_subjects,
    model_record,
    model_settings,
)
from idglow.errors import InputError
from idglow.quantization import BACKENDS, QUANTIZATIONS
from idglow.schedule import PROFILES, WINDOW_COORDINATES

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    """Add ``idglow generate`` to the command-line parser."""
    p = subparsers.add_parser(
        "generate",
        help="make group photos from one portrait per person",
        description="Make group photos from one portrait per person (slot order = order of --subject).",
    )
    add_subject_arguments(p)
    p.add_argument("--prompt", help="the full prompt, used as given (default: written from the subjects)")
    p.add_argument("--scene", help="scene text for the written prompt, e.g. 'a picnic in a park'")
    p.add_argument("--num-images", type=int, default=1, metavar="N",
                   help="candidates to make from the same prompt and people, with seeds seed, seed+1, ...")
    p.add_argument("--seed", type=int, help="image i uses seed+i (default: random; recorded in the sidecar)")
    p.add_argument("--id-scale", type=float, default=1.0, help="global identity strength (0 = plain FLUX)")
    p.add_argument("--window", nargs=2, type=float, metavar=("LO", "HI"),
                   help="σ window for identity injection (overrides the task's preset; in the age task, for the "
                        "people with a target age)")
    p.add_argument("--id-profile", choices=PROFILES, default="flat",
                   help="identity strength profile: flat (on inside the window, off outside), or linear (full "
                        "on the clean side of the window, falling linearly across it to 0 at its noisy edge)")
    p.add_argument("--window-coordinate", choices=WINDOW_COORDINATES, default="sigma",
                   help="what the window's bounds measure: sigma (noise level, default), one_minus_sigma (flow "
                        "time t = 1 − σ) or step_fraction (fraction of the denoising steps done)")
    p.add_argument("--steps", type=int, help="denoising steps (default: 28; tiny model: 8)")
    p.add_argument("--guidance", type=float, default=3.5, help="FLUX guidance scale")
    p.add_argument("--height", type=int, metavar="PIXELS", help="image height (default: 1024; tiny model: 64)")
    p.add_argument("--width", type=int, metavar="PIXELS", help="image width (default: 1024; tiny model: 64)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for PNGs and JSON sidecars")
    add_model_arguments(p)
    m = p.add_argument_group("memory (smaller GPUs)")
    m.add_argument("--quantize", choices=QUANTIZATIONS,
                   help="int8 weights for the transformer's blocks (torchao or optimum-quanto must be installed)")
    m.add_argument("--quant-backend", choices=BACKENDS, default="auto",
                   help="quantization library (default auto: torchao, else optimum-quanto)")
    m.add_argument("--cpu-offload", action="store_true",
                   help="keep each model on the CPU until it runs (diffusers' model CPU offload; CUDA only)")
    p.set_defaults(func=run)


def check_generation_flags(args: argparse.Namespace) -> None:
    """Refuse a bad --window or --num-images before any model loads."""
    from idglow.schedule import IdentityWindow

    if args.window is not None:
        IdentityWindow(*args.window)
    if args.num_images < 1:
        raise InputError(f"--num-images {args.num_images}: must be at least 1")


def run(args: argparse.Namespace) -> int:
    """``idglow generate``: load the model, make the images and their sidecars; returns the exit code."""
    from idglow.loading import TINY_MODEL_NOTE, load_pipeline
    from idglow.progress import StepProgress
    from idglow.quantization import quantization_backend

    check_generation_flags(args)
    subjects = build_subjects(args)
    settings = model_settings(args)
    backend = quantization_backend(args.quant_backend) if args.quantize else None  # a missing one fails here
    pipe = load_pipeline(settings, quantize=args.quantize, quant_backend=backend or "auto",
                         cpu_offload=args.cpu_offload)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if settings.is_tiny:
        print(f"note: {TINY_MODEL_NOTE}")
    steps = args.steps or settings.default_steps
    size = settings.default_size
    prompt_kwargs, prompt_record = _prompt(args, pipe, subjects)
    with StepProgress(total=steps, desc="generating") as progress:
        output = pipe(
            **prompt_kwargs,
            subjects=subjects,
            task=args.task,
            id_scale=args.id_scale,
            id_window=tuple(args.window) if args.window else None,
            id_profile=args.id_profile,
            window_coordinate=args.window_coordinate,
            num_images=args.num_images,
            seed=args.seed,
            num_inference_steps=steps,
            guidance_scale=args.guidance,
            height=args.height or size,
            width=args.width or size,
            callback_on_step_end=progress.callback,
        )
    model_info = {**model_record(args), "quantize": args.quantize, "quant_backend": backend, "cpu_offload": args.cpu_offload}
    _write_outputs(args, out_dir, output, subjects, prompt_record, model_info)
    return 0


def _prompt(args: argparse.Namespace, pipe, subjects) -> tuple[dict, dict]:
    """The pipeline's prompt arguments and the sidecar's prompt record: the user's --prompt, else a composed one."""
    if args.prompt:
        return {"prompt": args.prompt}, {"text": args.prompt, "source": "user"}
    from idglow.prompting import PromptSynthesizer

    group_prompt = PromptSynthesizer.from_pipeline(pipe).compose(subjects, task=args.task, scene=args.scene or "")
    return group_prompt.pipeline_kwargs(), group_prompt.to_dict()


def _write_outputs(args: argparse.Namespace, out_dir: Path, output, subjects, prompt_record: dict,
                   model_info: dict) -> None:
    """Each image as ``idglow_SEED.png`` with its JSON sidecar; one line per image on stdout."""
    for i, (image, seed) in enumerate(zip(output.images, output.seeds)):
        stem = f"idglow_{seed}"
        image.save(out_dir / f"{stem}.png")
        sidecar = {
            "image": f"{stem}.png",
            "seed": seed,
            "params": output.params,
            "prompt": prompt_record,
            "model": model_info,
            "subjects": [{"slot": k, "file": str(args.subject[k]), "label": s.label, "target_age": s.target_age}
                         for k, s in enumerate(subjects)],
            "active_sigmas": output.active_sigmas,
            "face_match": output.face_matches[i].to_dict() if output.face_matches else None,
        }
        (out_dir / f"{stem}.json").write_text(json.dumps(sidecar, indent=2))
        print(f"{out_dir / (stem + '.png')}  seed={seed}  identity per person: {identity_text(sidecar['face_match'])}")


def identity_text(face_match: dict | None) -> str:
    """Each person's identity similarity, "face not found" for a person whose face is missing (never 0.00)."""
    if not face_match:
        return "-"
    missing = set(face_match["missing"])
    return ", ".join("face not found" if slot in missing else f"{similarity:.2f}"
                     for slot, similarity in enumerate(face_match["similarity"]))
