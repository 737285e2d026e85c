"""Flags and checks shared by the commands that take subjects or load the generator."""

from __future__ import annotations

import argparse
from pathlib import Path

from idglow.errors import InputError


def add_subject_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subject", action="append", required=True, metavar="IMAGE",
                   help="portrait of one person (repeat, 1-6 times; slot order = order given)")
    p.add_argument("--task", default="fusion", choices=["fusion", "age"],
                   help="fusion: everyone as they are; age: show each person at --target-age")
    p.add_argument("--target-age", action="append", type=float, metavar="YEARS",
                   help="target age per subject, in subject order (age task)")
    p.add_argument("--label", action="append", metavar="NAME", help="name per subject, in subject order")


def build_subjects(args: argparse.Namespace):
    """Check the subject flags (counts before any file is read) and decode the photos → SubjectRef list."""
    from idglow.images import decode_image
    from idglow.subjects import MAX_SUBJECTS, SubjectRef

    paths = args.subject
    if len(paths) > MAX_SUBJECTS:
        raise InputError(f"{len(paths)} subjects given; at most {MAX_SUBJECTS} are supported")
    ages = args.target_age or []
    if ages and len(ages) != len(paths):
        raise InputError(f"{len(ages)} --target-age values for {len(paths)} subjects; the age task needs "
                         f"one --target-age per subject")
    if args.task == "age" and not ages:
        raise InputError("the age task needs one --target-age per subject")
    labels = args.label or []
    if labels and len(labels) != len(paths):
        raise InputError(f"{len(labels)} --label values for {len(paths)} subjects")
    return [
        SubjectRef(image=decode_image(path), target_age=ages[i] if ages else None,
                   label=labels[i] if labels else Path(path).stem)
        for i, path in enumerate(paths)
    ]


def add_face_arguments(g) -> None:
    g.add_argument("--faces", choices=["dlib", "insightface"], default="dlib", help="face analysis backend")
    g.add_argument("--face-root", metavar="DIR", help="insightface: folder that holds models/<pack>/")
    g.add_argument("--face-pack", default="antelopev2", help="insightface model pack name")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of every command that loads the generator."""
    g = p.add_argument_group("model (default: the embedded tiny demo model with dlib faces)")
    g.add_argument("--model", metavar="DIR", help="FLUX checkpoint in diffusers format (local folder)")
    g.add_argument("--adapter", metavar="DIR", help="IdGlow adapter folder (config.json + safetensors)")
    add_face_arguments(g)
    g.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: bfloat16 on GPU")


def model_settings(args: argparse.Namespace):
    from idglow.loading import ModelSettings

    return ModelSettings(
        model_dir=args.model, adapter_dir=args.adapter, faces=args.faces, face_root=args.face_root,
        face_pack=args.face_pack, device=args.device, dtype=args.dtype,
    )
