"""``idglow data build-sft``: make an SFT training set from one's own group photos."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="prepare training data")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    b = sub.add_parser(
        "build-sft",
        help="make a fusion SFT set from group photos",
        description="Detect the faces in each group photo and use them as that photo's per-person references "
                    "(same-photo crops and mirrored copies). The result trains `idglow train sft`.",
    )
    b.add_argument("--photos", required=True, metavar="DIR", help="folder of group photos (JPEG/PNG/WebP)")
    b.add_argument("--out", required=True, metavar="DIR", help="new, empty output folder")
    b.add_argument("--min-faces", type=int, default=2, help="skip photos with fewer faces (default 2)")
    b.add_argument("--max-faces", type=int, default=6, help="skip photos with more faces (default 6)")
    b.add_argument("--caption", help="prompt for photos without a NAME.txt beside them")
    b.add_argument("--faces", choices=["dlib", "insightface"], default="dlib", help="face analysis backend")
    b.add_argument("--face-root", metavar="DIR", help="insightface: folder that holds models/<pack>/")
    b.add_argument("--face-pack", default="antelopev2", help="insightface model pack name")
    b.set_defaults(func=run_build_sft)


def run_build_sft(args: argparse.Namespace) -> int:
    from idglow.loading import ModelSettings, load_face_analyzer
    from idglow.training.build_sft import build_sft_dataset

    analyzer = load_face_analyzer(ModelSettings(faces=args.faces, face_root=args.face_root, face_pack=args.face_pack))
    report = build_sft_dataset(args.photos, args.out, analyzer, min_faces=args.min_faces,
                               max_faces=args.max_faces, caption=args.caption)
    for name, why in report.skipped.items():
        print(f"skipped {name}: {why}")
    print(f"{report.kept} of {report.photos} photos written to {report.out_dir}")
    return 0 if report.kept else 1
