"""``idglow score IMAGE --subject PHOTO ...``: judge a group photo against its people and print JSON — per
person the matched face, identity similarity, whether the face in their place is theirs (and whose it is
otherwise), confusion, copy-paste against a ground truth and apparent age against a target; the group's swaps."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from idglow.commands.common import add_face_arguments, target_age

LEFT_TO_RIGHT = "left-to-right"


def register(subparsers) -> None:
    """Add ``idglow score`` to the command-line parser."""
    p = subparsers.add_parser(
        "score",
        help="judge a group photo: identity, binding (who stands where), confusion, age (JSON)",
        description=(
            "Find the faces of IMAGE and judge them against the people of --subject (one portrait each, in slot "
            "order). Identity similarity comes from the Hungarian match; binding asks whether the face in each "
            "person's place is theirs: give the places with --order left-to-right (the subjects are given left "
            "to right), --order 2,1,3 (each subject's position, 1 = leftmost) or --prompt (a prompt of the "
            "template writer, read with the --label names)."
        ),
    )
    p.add_argument("image", metavar="IMAGE", help="the group photo to judge")
    p.add_argument("--subject", action="append", required=True, metavar="PHOTO",
                   help="portrait of one person (repeat; slot order = order given)")
    p.add_argument("--label", action="append", metavar="NAME", help="name per subject, in subject order")
    p.add_argument("--order", metavar="left-to-right|P1,P2,...",
                   help="where the prompt puts the people: 'left-to-right' (in subject order) or each subject's "
                        "position from the left, comma-separated")
    p.add_argument("--prompt", metavar="TEXT", help="the prompt the image was made from; people's places are read "
                                                    "from its position markers")
    p.add_argument("--target-age", action="append", type=target_age, metavar="YEARS|-",
                   help="target age per subject, in subject order ('-' for a person who keeps their age)")
    p.add_argument("--ground-truth", metavar="PHOTO", help="a real photo of the scene, for copy-paste")
    p.add_argument("--min-similarity", type=float, metavar="COS",
                   help="same-person threshold (default: the face backend's documented one)")
    add_face_arguments(p)
    p.set_defaults(func=run)


def parse_order(order: str | None, num_people: int) -> list[int] | None:
    """``--order`` → each person's position (1 = leftmost), or None when not given."""
    from idglow.errors import InputError

    if order is None:
        return None
    if order.strip().lower() == LEFT_TO_RIGHT:
        return list(range(1, num_people + 1))
    try:
        positions = [int(v) for v in order.split(",")]
    except ValueError:
        raise InputError(f"--order {order!r}: expected '{LEFT_TO_RIGHT}' or positions like 2,1,3") from None
    if sorted(positions) != list(range(1, num_people + 1)):
        raise InputError(f"--order {order!r}: give each of the {num_people} subjects a position 1..{num_people}, "
                         "each once")
    return positions


def _positions(args: argparse.Namespace, labels: list[str]) -> list[int] | None:
    from idglow.errors import InputError
    from idglow.faces.scoring import prompt_positions

    if args.order and args.prompt:
        raise InputError("give the people's places with --order or with --prompt, not both")
    if args.prompt is None:
        return parse_order(args.order, len(labels))
    positions = prompt_positions(args.prompt, labels if args.label else None, len(labels))
    if positions is None:
        raise InputError("--prompt does not place every person (no 'the Nth person from the left' for each; "
                         "with --label, each name must follow exactly one marker)")
    return positions


def _check(args: argparse.Namespace) -> list[str]:
    from idglow.errors import InputError

    missing = [p for p in [args.image, *args.subject, args.ground_truth] if p and not Path(p).is_file()]
    if missing:
        raise InputError(f"no such photo: {', '.join(missing)}")
    n = len(args.subject)
    for flag, values in (("--label", args.label), ("--target-age", args.target_age)):
        if values and len(values) != n:
            raise InputError(f"{len(values)} {flag} values for {n} subjects; give one per subject")
    return list(args.label) if args.label else [Path(p).stem for p in args.subject]


def run(args: argparse.Namespace) -> int:
    """``idglow score``: print the group's score as JSON; returns the exit code."""
    from idglow.faces.scoring import group_report, reference_embedding, score_group
    from idglow.images import decode_image
    from idglow.loading import ModelSettings, load_face_analyzer

    labels = _check(args)
    positions = _positions(args, labels)
    analyzer = load_face_analyzer(ModelSettings(faces=args.faces, face_root=args.face_root,
                                                face_pack=args.face_pack, det_threshold=args.det_threshold))
    refs = [reference_embedding(analyzer, decode_image(p), slot=j) for j, p in enumerate(args.subject)]
    truth = None if args.ground_truth is None else decode_image(args.ground_truth)
    binding = score_group(decode_image(args.image), refs, analyzer, positions=positions, ground_truth=truth,
                          min_similarity=args.min_similarity)
    report = {"image": str(args.image), **group_report(binding, labels, args.target_age)}
    print(json.dumps(report, indent=2))
    return 0
