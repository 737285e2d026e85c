"""``idglow data build-sft``: make an SFT training set from one's own photos."""

from __future__ import annotations

import argparse
import logging

from idglow.commands.common import add_face_arguments, replacing

MAX_SIDE_TEXT = "2048"  # idglow.training.build_sft.MAX_STORED_SIDE, not imported here: it pulls in torch

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    """Add ``idglow data`` and its actions to the command-line parser."""
    p = subparsers.add_parser("data", help="prepare training data")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    b = sub.add_parser(
        "build-sft",
        help="make an SFT set from group photos",
        description="Each group photo is a target; each of its people gets references from other photos of "
                    "that person (per-person folders or a manifest), averaged into one identity embedding, or a "
                    "crop of the target itself when there is no other photo (recorded, and warned about). "
                    "References more than --age-gap years from the target's age also give an age-transformation "
                    "row. Each row's prompt is written by the same prompt writer as generation (the people left to "
                    "right with name, age and place; a vision-language model with --vlm, else the template). The "
                    "result trains `idglow train sft`. Images are stored with their longest side at most --max-side "
                    "pixels, so the trainer accepts every file.",
    )
    source = b.add_mutually_exclusive_group(required=True)
    source.add_argument("--photos", metavar="DIR",
                        help="folder of group photos (JPEG/PNG/WebP), or of one folder per person")
    source.add_argument("--manifest", metavar="FILE",
                        help="JSON or CSV: who is in which photo, with optional ages and face indices")
    b.add_argument("--out", required=True, metavar="DIR", help="new, empty output folder")
    b.add_argument("--overwrite", action="store_true",
                   help="replace an earlier build-sft output in --out (a folder with metadata.jsonl)")
    b.add_argument("--max-side", type=int, metavar="PIXELS",
                   help=f"longest side of the stored images and crops, 64-{MAX_SIDE_TEXT} (larger photos are "
                        f"scaled down; default {MAX_SIDE_TEXT}: twice the default training resolution)")
    b.add_argument("--min-faces", type=int, default=2, help="skip photos with fewer faces (default 2)")
    b.add_argument("--max-faces", type=int, default=6, help="skip photos with more faces (default 6)")
    b.add_argument("--caption", metavar="TEXT", help="scene text for photos without a NAME.txt beside them")
    b.add_argument("--age-gap", type=float, default=10.0, metavar="YEARS",
                   help="references further than this from the target's age make an age row (default 10)")
    b.add_argument("--max-references", type=int, default=4, metavar="N",
                   help="at most N other photos averaged per person (default 4)")
    add_face_arguments(b)
    b.add_argument("--vlm", metavar="DIR",
                   help="vision-language model folder (transformers format) that describes the people in each "
                        "prompt; default: the template writer")
    b.add_argument("--device", help="device of the vision-language model (default: CUDA when available)")
    b.set_defaults(func=run_build_sft)


def _prompt_writer(args: argparse.Namespace):
    """The prompt writer of generation: with ``--vlm`` its model describes the people, else the template."""
    from idglow.prompting import PromptSynthesizer, TransformersVLM

    vlm = TransformersVLM.from_pretrained(args.vlm, device=args.device) if args.vlm else None
    return PromptSynthesizer(vlm=vlm)


def run_build_sft(args: argparse.Namespace) -> int:
    """``idglow data build-sft``: write an SFT data folder; returns the exit code."""
    from idglow.loading import ModelSettings, load_face_analyzer
    from idglow.training.build_sft import BuildOptions, build_sft_dataset
    from idglow.training.files import METADATA

    options = BuildOptions(min_faces=args.min_faces, max_faces=args.max_faces, caption=args.caption,
                           age_gap=args.age_gap, max_references=args.max_references,
                           **({} if args.max_side is None else {"max_side": args.max_side}))
    analyzer = load_face_analyzer(ModelSettings(faces=args.faces, face_root=args.face_root, face_pack=args.face_pack,
                                                det_threshold=args.det_threshold))
    with replacing(args.out, METADATA, args.overwrite):
        report = build_sft_dataset(args.photos, args.out, analyzer, manifest=args.manifest, options=options,
                                   prompt_writer=_prompt_writer(args))
    for name, why in report.skipped.items():
        print(f"skipped {name}: {why}")
    if report.same_photo:
        shown = "; ".join(report.same_photo[:10]) + (f"; and {len(report.same_photo) - 10} more"
                                                     if len(report.same_photo) > 10 else "")
        print(f"warning: {len(report.same_photo)} reference(s) are crops of the target photo itself, which the model "
              f"can learn to copy (give other photos of these people: per-person folders or --manifest): {shown}")
    print(f"{report.kept} of {report.photos} photos are targets, written to {report.out_dir} as {report.rows} rows "
          f"({report.age_rows} age transformation); prompts written by the {report.prompt_writer} writer")
    return 0 if report.kept else 1
