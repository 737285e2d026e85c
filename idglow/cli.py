"""The ``idglow`` command. Each sub-command lives in its own module with ``register(subparsers)``.

Errors a user can fix (IdGlowError, ValueError from input checks) print one line and exit with code 2;
set IDGLOW_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from idglow import __version__
from idglow.errors import IdGlowError

# Modules that add sub-commands. Heavy imports stay inside their command functions.
COMMAND_MODULES = [
    "idglow.commands.generate",
    "annotation.commands",
    "idglow.commands.samples",
    "idglow.commands.faces",
    "idglow.commands.prompt",
    "idglow.commands.eval",
    "idglow.commands.train",
    "idglow.commands.data",
]

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like argparse but without the usage dump
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="idglow", description="Identity-preserving multi-subject group photos.")
    parser.add_argument("--version", action="version", version=f"idglow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (IdGlowError, ValueError) as err:
        if os.environ.get("IDGLOW_DEBUG"):
            raise
        print(f"idglow: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("idglow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
