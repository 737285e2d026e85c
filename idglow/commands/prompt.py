"""``idglow prompt``: write the group prompt for a set of portraits and print it as JSON."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from idglow.commands.common import add_face_arguments, add_subject_arguments, build_subjects
from idglow.errors import InputError

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    """Add ``idglow prompt`` to the command-line parser."""
    p = subparsers.add_parser(
        "prompt",
        help="write the group prompt for one portrait per person (JSON)",
        description=(
            "Write the prompt for a group photo (slot order = order of --subject) and print it as JSON. "
            "With --vlm a local vision-language model describes the people; without it, or when its answer "
            "is invalid, a deterministic template is used (\"source\": \"template\")."
        ),
    )
    add_subject_arguments(p)
    p.add_argument("--scene", default="", metavar="TEXT", help="the scene you want (place, light, mood)")
    add_badcase_arguments(p, "flagged badcases to learn from: a JSON list or JSON Lines of badcase objects")
    g = p.add_argument_group("models")
    g.add_argument("--vlm", metavar="DIR", help="vision-language model folder (transformers format)")
    g.add_argument("--device", help="device of the vision-language model (default: cuda when available)")
    g.add_argument("--max-new-tokens", type=int, default=768, metavar="N", help="bound on the model's answer")
    g.add_argument("--model", metavar="DIR|tiny",
                   help="FLUX checkpoint (diffusers format), or 'tiny', whose tokenizers measure the prompt's "
                        "length (default: a word-based estimate)")
    g.add_argument("--no-faces", action="store_true", help="skip face analysis (no age/gender from faces)")
    add_face_arguments(g)
    p.set_defaults(func=run)


BADCASE_STORES = "idglow.badcase_stores"  # entry points: (database URL, task) → the newest flagged Badcases


def add_badcase_arguments(parser: argparse.ArgumentParser, badcases_help: str) -> None:
    """``--badcases FILE|URL`` and ``--max-badcases N`` (read them with :func:`badcases_from_args`)."""
    parser.add_argument("--badcases", metavar="FILE|URL", help=badcases_help + "; or the preference store's "
                        "database URL (e.g. sqlite:///data/idglow.db): its newest 200 flags, of the task when "
                        "there is one")
    parser.add_argument("--max-badcases", type=int, default=4, metavar="N",
                        help="badcases used per prompt (default: 4)")


def badcases_from_args(args: argparse.Namespace) -> list:
    """The badcases of ``--badcases`` (none without it), after checking ``--max-badcases``."""
    if args.max_badcases < 0:
        raise InputError(f"--max-badcases {args.max_badcases}: must be >= 0")
    if not args.badcases:
        return []
    if "://" in args.badcases:
        return badcases_from_store(args.badcases, getattr(args, "task", None))
    return load_badcases(args.badcases)


def badcases_source(value: str) -> str:
    """``--badcases`` as a report records it: a database URL loses its password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(value)
    if "://" not in value or parts.password is None:
        return value
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def badcases_from_store(url: str, task: str | None = None) -> list:
    """The newest flagged bad cases in the preference store at ``url``, read by the installed store plugin
    (the annotation app's ``idglow.badcase_stores`` entry point)."""
    from importlib.metadata import entry_points

    readers = sorted(entry_points(group=BADCASE_STORES), key=lambda e: e.name)
    if not readers:
        raise InputError(f"--badcases {url}: reading a database needs the annotation app installed "
                         "(pip install -e .); or pass a file written by `idglow export`")
    return readers[0].load()(url, task)


def load_badcases(path: str | Path):
    """Badcases from a JSON list or a JSON Lines file."""
    from idglow.prompting import Badcase

    file = Path(path)
    if not file.is_file():
        raise InputError(f"--badcases {path}: no such file")
    text = file.read_text(encoding="utf-8").strip()
    try:
        if text.startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise InputError(f"--badcases {path}: not JSON or JSON Lines ({err})") from None
    badcases = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"--badcases {path}: entry {i + 1} is not an object")
        try:
            badcases.append(Badcase.from_dict(row))
        except (TypeError, ValueError) as err:
            raise InputError(f"--badcases {path}: entry {i + 1}: {err}") from None
    return badcases


def load_tokenizers(model_dir: str):
    """The CLIP and T5 tokenizers of a FLUX checkpoint folder (``tokenizer/`` and ``tokenizer_2/``)."""
    from transformers import AutoTokenizer

    from idglow.errors import ModelFolderError

    folder = Path(model_dir)
    missing = [name for name in ("tokenizer", "tokenizer_2") if not (folder / name).is_dir()]
    if missing:
        raise ModelFolderError(str(folder), [f"{m}/" for m in missing], what="FLUX checkpoint")
    return (
        AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True),
        AutoTokenizer.from_pretrained(folder / "tokenizer_2", local_files_only=True),
    )


def run(args: argparse.Namespace) -> int:
    """``idglow prompt``: write the group prompt as JSON; returns the exit code."""
    from idglow.errors import NoFaceError
    from idglow.prompting import PromptSynthesizer, TransformersVLM

    if args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    badcases = badcases_from_args(args)
    subjects = build_subjects(args)
    face_analyzer = None
    if not args.no_faces:
        from idglow.loading import ModelSettings, load_face_analyzer

        face_analyzer = load_face_analyzer(
            ModelSettings(faces=args.faces, face_root=args.face_root, face_pack=args.face_pack,
                          det_threshold=args.det_threshold)
        )
    tokenizer = tokenizer_2 = None
    if args.model == "tiny":
        from idglow.tiny import tiny_tokenizer

        tokenizer, tokenizer_2 = tiny_tokenizer(77), tiny_tokenizer(128)
    elif args.model:
        tokenizer, tokenizer_2 = load_tokenizers(args.model)
    vlm = None
    if args.vlm:
        vlm = TransformersVLM.from_pretrained(args.vlm, device=args.device, max_new_tokens=args.max_new_tokens)
    synthesizer = PromptSynthesizer(
        vlm=vlm, face_analyzer=face_analyzer, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
        max_badcases=args.max_badcases,
    )
    try:
        prompt = synthesizer.compose(subjects, task=args.task, scene=args.scene, badcases=badcases)
    except NoFaceError as err:
        raise NoFaceError(err.slot, args.subject[err.slot]) from None
    print(json.dumps(prompt.to_dict(), indent=2, ensure_ascii=False))
    return 0
