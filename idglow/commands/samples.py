"""``idglow samples``: write sample portraits (from photos bundled with installed packages) to a folder."""

from __future__ import annotations


def register(subparsers) -> None:
    """Add ``idglow samples`` to the command-line parser."""
    p = subparsers.add_parser(
        "samples", help="write sample portraits to try the other commands with",
        description="Write sample portraits to a folder: person1.jpg ... person6.jpg (the faces of insightface's "
                    "bundled group photo), tom.jpg and astronaut.jpg (from scikit-image), cropped around each "
                    "face, to try generate, faces, score, prompt and build-sft with. Nothing is downloaded; "
                    "existing files of the same name are replaced.")
    p.add_argument("--out", default="samples", metavar="DIR", help="folder to write to (default: samples)")
    p.set_defaults(func=run)


def run(args) -> int:
    """``idglow samples``: write the bundled sample portraits; returns the exit code."""
    from idglow.faces.dlib_backend import DlibAnalyzer
    from idglow.samples import write_sample_portraits

    for path in write_sample_portraits(args.out, DlibAnalyzer()):
        print(path)
    return 0
