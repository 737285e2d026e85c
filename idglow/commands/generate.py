"""``idglow generate``: group photos from reference portraits, written as PNG + JSON sidecar per image."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from idglow.errors import InputError

logger = logging.getLogger(__name__)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that loads the generator."""
    g = p.add_argument_group("model (default: the embedded tiny demo model with dlib faces)")
    g.add_argument("--model", metavar="DIR", help="FLUX checkpoint in diffusers format (local folder)")
    g.add_argument("--adapter", metavar="DIR", help="IdGlow adapter folder (config.json + safetensors)")
    g.add_argument("--faces", choices=["dlib", "insightface"], default="dlib", help="face analysis backend")
    g.add_argument("--face-root", metavar="DIR", help="insightface: folder that holds models/<pack>/")
    g.add_argument("--face-pack", default="antelopev2", help="insightface model pack name")
    g.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: bfloat16 on GPU")


def model_settings(args: argparse.Namespace):
    from idglow.loading import ModelSettings

    return ModelSettings(
        model_dir=args.model, adapter_dir=args.adapter, faces=args.faces, face_root=args.face_root,
        face_pack=args.face_pack, device=args.device, dtype=args.dtype,
    )


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="make group photos from one portrait per person",
        description="Make group photos from one portrait per person (slot order = order of --subject).",
    )
    p.add_argument("--subject", action="append", required=True, metavar="IMAGE",
                   help="portrait of one person (repeat, 1-6 times)")
    p.add_argument("--task", default="fusion", choices=["fusion", "age"],
                   help="fusion: everyone as they are; age: show each person at --target-age")
    p.add_argument("--target-age", action="append", type=float, metavar="YEARS",
                   help="target age per subject, in subject order (age task)")
    p.add_argument("--label", action="append", metavar="NAME", help="name per subject, in subject order")
    p.add_argument("--prompt", help="the full prompt, used as given (default: written from the subjects)")
    p.add_argument("--scene", help="scene text for the written prompt, e.g. 'a picnic in a park'")
    p.add_argument("--num-images", type=int, default=1, metavar="N")
    p.add_argument("--seed", type=int, help="image i uses seed+i (default: random; recorded in the sidecar)")
    p.add_argument("--id-scale", type=float, default=1.0, help="global identity strength (0 = plain FLUX)")
    p.add_argument("--window", nargs=2, type=float, metavar=("LO", "HI"),
                   help="σ window for identity injection (overrides the task's preset)")
    p.add_argument("--steps", type=int, help="denoising steps (default: 28; tiny model: 8)")
    p.add_argument("--guidance", type=float, default=3.5, help="FLUX guidance scale")
    p.add_argument("--height", type=int, help="default: 1024 (tiny model: 64)")
    p.add_argument("--width", type=int, help="default: 1024 (tiny model: 64)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for PNGs and JSON sidecars")
    add_model_arguments(p)
    p.set_defaults(func=run)


def build_subjects(args: argparse.Namespace):
    """Validate the subject flags (cheap checks first, before any model loads) → SubjectRef list."""
    from idglow.images import decode_image
    from idglow.schedule import IdentityWindow
    from idglow.subjects import MAX_SUBJECTS, SubjectRef

    paths = args.subject
    if len(paths) > MAX_SUBJECTS:
        raise InputError(f"{len(paths)} subjects given; at most {MAX_SUBJECTS} are supported")
    ages = args.target_age or []
    if args.task == "age" and len(ages) != len(paths):
        raise InputError(f"the age task needs one --target-age per subject: {len(paths)} subjects, {len(ages)} ages")
    if args.task != "age" and ages and len(ages) != len(paths):
        raise InputError(f"{len(ages)} --target-age values for {len(paths)} subjects")
    labels = args.label or []
    if labels and len(labels) != len(paths):
        raise InputError(f"{len(labels)} --label values for {len(paths)} subjects")
    if args.window is not None:
        try:
            IdentityWindow(*args.window)
        except ValueError as err:
            raise InputError(f"--window {args.window[0]} {args.window[1]}: {err}") from None
    if args.num_images < 1:
        raise InputError(f"--num-images {args.num_images}: must be at least 1")
    subjects = []
    for i, path in enumerate(paths):
        image = decode_image(path)
        subjects.append(SubjectRef(
            image=image,
            target_age=ages[i] if ages else None,
            label=labels[i] if labels else Path(path).stem,
        ))
    return subjects


def run(args: argparse.Namespace) -> int:
    from idglow.loading import TINY_MODEL_NOTE, load_pipeline
    from idglow.progress import StepProgress

    subjects = build_subjects(args)
    settings = model_settings(args)
    pipe = load_pipeline(settings)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if settings.is_tiny:
        print(f"note: {TINY_MODEL_NOTE}")
    steps = args.steps or settings.default_steps
    size = settings.default_size
    if args.prompt:
        prompt_kwargs, prompt_record = {"prompt": args.prompt}, {"text": args.prompt, "source": "user"}
    else:
        from idglow.prompting import PromptSynthesizer

        group_prompt = PromptSynthesizer.from_pipeline(pipe).compose(subjects, task=args.task, scene=args.scene or "")
        prompt_kwargs, prompt_record = group_prompt.pipeline_kwargs(), group_prompt.to_dict()
    with StepProgress(total=steps, desc="generating") as progress:
        output = pipe(
            **prompt_kwargs,
            subjects=subjects,
            task=args.task,
            id_scale=args.id_scale,
            id_window=tuple(args.window) if args.window else None,
            num_images=args.num_images,
            seed=args.seed,
            num_inference_steps=steps,
            guidance_scale=args.guidance,
            height=args.height or size,
            width=args.width or size,
            callback_on_step_end=progress.callback,
        )
    model_info = {"model": args.model or "tiny-demo", "adapter": args.adapter, "faces": args.faces}
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
        scores = ", ".join(f"{s:.2f}" for s in sidecar["face_match"]["similarity"]) if sidecar["face_match"] else "-"
        print(f"{out_dir / (stem + '.png')}  seed={seed}  identity per person: {scores}")
    return 0

