"""``idglow faces PHOTO...``: detect the faces of photos and print them as JSON (box, score, estimated age and
gender), one object per photo."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from idglow.commands.common import add_face_arguments


def register(subparsers) -> None:
    """Add ``idglow faces`` to the command-line parser."""
    p = subparsers.add_parser(
        "faces",
        help="print each face of the photos as JSON (box, score, estimated age)",
        description=(
            "Detect the faces of each photo with the chosen face backend and print JSON: per photo its path, "
            "size and faces (largest first), each with its box (x1, y1, x2, y2 in pixels), detector score, "
            "estimated age in years and gender. The default dlib backend estimates age and gender with dlib's "
            "age and gender networks, offline."
        ),
    )
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="image files (JPEG, PNG, WebP)")
    p.add_argument("--embeddings", action="store_true", help="also print each face's identity embedding")
    add_face_arguments(p)
    p.set_defaults(func=run)


def describe_photo(path: str | Path, analyzer, with_embedding: bool = False) -> dict[str, Any]:
    """One photo's JSON record: path, width, height and its faces (``Face.to_dict``), largest first."""
    from idglow.images import decode_image

    image = decode_image(path)
    faces = analyzer.detect(image)
    return {"path": str(path), "width": image.width, "height": image.height,
            "faces": [face.to_dict(with_embedding=with_embedding) for face in faces]}


def run(args: argparse.Namespace) -> int:
    """``idglow faces``: print each photo's faces as JSON; returns the exit code."""
    from idglow.errors import InputError
    from idglow.loading import ModelSettings, load_face_analyzer

    missing = [p for p in args.photos if not Path(p).is_file()]
    if missing:
        raise InputError(f"no such photo: {', '.join(missing)}")
    analyzer = load_face_analyzer(ModelSettings(faces=args.faces, face_root=args.face_root,
                                                face_pack=args.face_pack, det_threshold=args.det_threshold))
    records = [describe_photo(path, analyzer, args.embeddings) for path in args.photos]
    print(json.dumps(records, indent=2))
    return 0
