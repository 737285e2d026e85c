"""The ``idglow`` command. Each sub-command lives in its own module with ``register(subparsers)``.

Packages that build on the library add their own sub-commands through the ``idglow.commands`` entry-point
group (a ``register(subparsers)`` function); the annotation app registers its preference-store commands
(``db``, ``users``, ``models``, ``export``, ``demo-data``, ``train-from-db``) this way, so they are listed
whenever the app is installed, while the library never imports the app.

Errors a user can fix (IdGlowError, ValueError from input checks) print one line and exit with code 2;
set IDGLOW_DEBUG=1 to see the traceback instead. A command that needs an optional extra which is not installed
(e.g. ``sqlalchemy`` of ``idglow[app]``) says which one to install, with code 2 too.

Every option's help shows its default, and every command has a description (its one-line help when it gives no
longer one).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from idglow import __version__
from idglow.errors import IdGlowError

# Modules that add sub-commands. Heavy imports stay inside their command functions.
COMMAND_MODULES = [
    "idglow.commands.generate",
    "idglow.commands.samples",
    "idglow.commands.faces",
    "idglow.commands.score",
    "idglow.commands.prompt",
    "idglow.commands.eval",
    "idglow.commands.train",
    "idglow.commands.data",
    "idglow.commands.serve",
]

ENTRY_POINT_GROUP = "idglow.commands"
EXIT_USAGE = 2

# Top-level module → the optional extra of pyproject.toml that installs it.
EXTRAS = {
    "sqlalchemy": "app", "alembic": "app", "argon2": "app", "gradio": "app", "gradio_client": "app",
    "krippendorff": "app", "choix": "app", "peft": "train", "tensorboard": "train", "pyarrow": "train",
    "datasets": "train", "ray": "serve", "optimum": "quant", "psycopg": "postgres",
}
# transformers warns once per image-processor class that it falls back to its Pillow variant without torchvision;
# the Pillow variant is the one IdGlow uses, so the warning (two lines on every model command) says nothing.
TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"

logger = logging.getLogger(__name__)

Registrar = Callable[[argparse._SubParsersAction], None]


def plugin_registrars() -> list[Registrar]:
    """The ``register`` functions of the installed ``idglow.commands`` entry points, by entry-point name.
    One that fails to load is skipped with a warning (the library's own commands still work)."""
    from importlib.metadata import entry_points

    found: list[Registrar] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
        try:
            registrar = ep.load()
        except Exception as err:  # a broken plugin must not take the library's commands down
            logger.warning("skipping idglow command plugin %s = %s: %s", ep.name, ep.value, err)
            continue
        if registrar not in found:
            found.append(registrar)
    return found


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, with " (default: X)" added to each option whose help does not already give its
    default (options without a value, and empty or None defaults, show none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        empty = default is None or default is False or default is argparse.SUPPRESS or default in ([], (), "")
        if not action.option_strings or "default" in text.lower() or empty or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


class _SubCommands(argparse._SubParsersAction):
    """Sub-command parsers whose description is their one-line help unless they give one."""

    def add_parser(self, name: str, **kwargs):
        if kwargs.get("help") and not kwargs.get("description"):
            kwargs["description"] = kwargs["help"][0].upper() + kwargs["help"][1:] + "."
        return super().add_parser(name, **kwargs)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _SubCommands)

    def error(self, message: str) -> None:  # one line, exit 2, like argparse but without the usage dump
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class _TorchvisionFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return TORCHVISION_FALLBACK not in record.getMessage()


def quiet_torchvision_fallback() -> None:
    """Drop transformers' "requires torchvision ... falling back to ...Pil" warnings (see TORCHVISION_FALLBACK).
    Used by the ``idglow`` command and the web app; calling it again adds nothing."""
    source = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _TorchvisionFallback) for f in source.filters):
        source.addFilter(_TorchvisionFallback())


def missing_extra(err: ModuleNotFoundError) -> str | None:
    """The extra to install for a module that an optional extra provides, or None for any other module."""
    return EXTRAS.get((err.name or "").split(".")[0])


def build_parser(extra: Sequence[Registrar] = ()) -> argparse.ArgumentParser:
    """The ``idglow`` parser: the library's commands, then the installed plugins' and ``extra`` (each
    registrar once)."""
    parser = _Parser(prog="idglow", description="Identity-preserving multi-subject group photos.")
    parser.add_argument("--version", action="version", version=f"idglow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    registrars = plugin_registrars()
    registrars += [r for r in extra if r not in registrars]
    for registrar in registrars:
        registrar(sub)
    return parser


def main(argv: list[str] | None = None, extra: Sequence[Registrar] = ()) -> int:
    """Run ``idglow`` with ``argv``; ``extra``: more command registrars (see :func:`build_parser`)."""
    parser = build_parser(extra)
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "takes_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    quiet_torchvision_fallback()
    try:
        return int(args.func(args) or 0)
    except (IdGlowError, ValueError) as err:
        if os.environ.get("IDGLOW_DEBUG"):
            raise
        print(f"idglow: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as err:
        extra_name = missing_extra(err)
        if extra_name is None or os.environ.get("IDGLOW_DEBUG"):
            raise
        print(f"idglow: error: `idglow {args.command}` needs {err.name}, which is not installed: "
              f"pip install 'idglow[{extra_name}]'", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("idglow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
