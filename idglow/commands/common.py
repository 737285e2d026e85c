"""Flags and checks shared by the commands that take subjects or load the generator."""

from __future__ import annotations

import argparse
import os
import shutil
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from idglow.errors import InputError

KEEP_AGE = ("-", "keep")
TINY = "tiny"  # --model value of the embedded tiny demo model


def add_subject_arguments(p: argparse.ArgumentParser) -> None:
    """The people of a group: --subject (repeated), --task, --target-age and --label."""
    p.add_argument("--subject", action="append", required=True, metavar="IMAGE",
                   help="portrait of one person (repeat, 1-6 times; slot order = order given)")
    p.add_argument("--task", default="fusion", choices=["fusion", "age"],
                   help="fusion: everyone as they are; age: show people at their --target-age (default: fusion)")
    p.add_argument("--target-age", action="append", type=target_age, metavar="YEARS|-",
                   help="target age per subject, in subject order (age task); '-' or 'keep' for a person who "
                        "keeps their own age (identity stays on at every step)")
    p.add_argument("--label", action="append", metavar="NAME", help="name per subject, in subject order")
    p.add_argument("--describe-as", type=describe_as_list, metavar="WORD,WORD,...",
                   help="how the prompt names each person, in subject order, comma-separated: woman, man, girl, "
                        "boy, or '-' to leave it to the face analyzer (e.g. woman,-,man)")


def describe_as_list(text: str) -> list[str | None]:
    """A ``--describe-as`` value: comma-separated words (``-`` for "leave it to the model")."""
    from idglow.subjects import parse_describe_as

    try:
        return [parse_describe_as(word) for word in text.split(",")]
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def target_age(text: str) -> float | None:
    """A ``--target-age`` value: years, or ``-`` / ``keep`` (None: the person keeps their age)."""
    if text.strip().lower() in KEEP_AGE:
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of years, '-' or 'keep'") from None


def build_subjects(args: argparse.Namespace):
    """Check the subject flags (the group rules before any file is read) and decode the photos → SubjectRefs."""
    from idglow.images import decode_image
    from idglow.subjects import SubjectRef, validate_group

    paths = args.subject
    ages = args.target_age or []
    if ages and len(ages) != len(paths):
        raise InputError(f"{len(ages)} --target-age values for {len(paths)} subjects; give one per subject "
                         f"(a number of years, or '-' for a person who keeps their age)")
    labels = args.label or []
    if labels and len(labels) != len(paths):
        raise InputError(f"{len(labels)} --label values for {len(paths)} subjects")
    described = getattr(args, "describe_as", None) or []
    if described and len(described) != len(paths):
        raise InputError(f"{len(described)} --describe-as values for {len(paths)} subjects; give one per subject "
                         "(woman, man, girl, boy, or '-' to leave it to the model)")
    refs = [SubjectRef(image=path, target_age=ages[i] if ages else None,
                       label=labels[i] if labels else Path(path).stem,
                       describe_as=described[i] if described else None) for i, path in enumerate(paths)]
    try:
        validate_group(refs, args.task)
    except InputError as err:  # the library's wording is the app's ("leave it blank"); on the command line it is '-'
        raise InputError(str(err).replace("leave it blank", "give '-' as their --target-age")) from None
    return [replace(ref, image=decode_image(ref.image)) for ref in refs]


def add_face_arguments(g) -> None:
    """The face-analysis options shared by every command that finds faces."""
    g.add_argument("--faces", choices=["dlib", "insightface"], default="dlib",
                   help="face analysis backend: dlib (bundled, offline) or insightface (needs --face-root)")
    g.add_argument("--face-root", metavar="DIR", help="insightface: folder that holds models/<pack>/")
    g.add_argument("--face-pack", default="antelopev2", metavar="NAME", help="insightface model pack name")
    g.add_argument("--det-threshold", type=float, metavar="SCORE",
                   help="face detection score below which a detection is not a face (default: dlib 0.1, "
                        "insightface 0.5; see idglow.faces.base)")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of every command that loads the generator."""
    g = p.add_argument_group("model (default: the embedded tiny demo model with dlib faces)")
    g.add_argument("--model", metavar="DIR|tiny",
                   help="FLUX checkpoint in diffusers format (local folder), or 'tiny' for the embedded tiny demo "
                        "model (the default)")
    g.add_argument("--adapter", metavar="DIR",
                   help="IdGlow adapter folder (config.json + safetensors), e.g. the adapter/ of `idglow train` "
                        "(default: the model's own adapter/, or the tiny model's random one)")
    add_face_arguments(g)
    g.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weights' dtype (default: bfloat16 on GPU, float32 on CPU and for the tiny model)")


def model_settings(args: argparse.Namespace):
    """The model and adapter folders, device, dtype and face backend given on the command line."""
    from idglow.loading import ModelSettings

    return ModelSettings(
        model_dir=None if is_tiny(args.model) else args.model, adapter_dir=args.adapter, faces=args.faces,
        face_root=args.face_root, face_pack=args.face_pack, det_threshold=args.det_threshold, device=args.device,
        dtype=args.dtype,
    )


def is_tiny(model: str | None) -> bool:
    """Whether a --model value names the embedded tiny demo model (None, the default, or ``tiny``)."""
    return model is None or model == TINY


def model_record(args: argparse.Namespace) -> dict:
    """What a sidecar or report records of the model: its folder (``tiny-demo`` for the tiny model), the adapter
    folder and the face backend."""
    return {"model": "tiny-demo" if is_tiny(args.model) else args.model, "adapter": args.adapter, "faces": args.faces}


@contextmanager
def replacing(out: str | Path, marker: str, overwrite: bool):
    """Run the body that writes the folder ``out``; with ``overwrite``, an earlier output there (a folder that
    holds ``marker``) is moved aside first, deleted when the body succeeds and put back when it fails. A folder
    without ``marker`` is never removed (the body refuses it as not empty)."""
    out = Path(out)
    earlier = out.is_dir() and any(out.iterdir())
    if not (overwrite and earlier):
        yield
        return
    if not (out / marker).is_file():
        raise InputError(f"{out} holds no {marker}: --overwrite replaces only an earlier output of this command")
    aside = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    out.rename(aside)
    try:
        yield
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        aside.rename(out)
        raise
    shutil.rmtree(aside)
