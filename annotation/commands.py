"""``idglow`` sub-commands of the preference store: ``db upgrade``,
``users add|list|set-role|activate|deactivate|reset-password``, ``models add|list|remove|default``, ``export``,
``demo-data`` and ``train-from-db``. Every command takes ``--db URL``
(default: $IDGLOW_DB_URL, else the SQLite file in the data dir) and ``--data-dir`` (default:
$IDGLOW_DATA_DIR, else the folder of the SQLite file, else ./data). Heavy imports (SQLAlchemy, pyarrow)
happen inside the commands.

They reach the ``idglow`` command through the ``idglow.commands`` entry point (see pyproject.toml);
:func:`main` runs ``idglow`` with them registered whether or not the package metadata is installed."""

from __future__ import annotations

import argparse
import getpass
import importlib.util
import sys
from datetime import datetime, timezone
from pathlib import Path

from idglow.errors import InputError

# What the preference-store commands import (the ``app`` extra); without them the commands stay listed and say
# what to install.
STORE_MODULES = ("sqlalchemy", "alembic", "argon2")
APP_EXTRA_HINT = "pip install 'idglow[app]'"
COMMANDS = {
    "db": "manage the preference database",
    "users": "manage annotation users",
    "models": "manage model versions",
    "export": "export the preferences (Pick-a-Pic v2 columns + group columns)",
    "demo-data": "fill a database with synthetic generations, users and votes",
    "train-from-db": "export the preference store (with images) to a temporary folder and run DPO on it",
}


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db", default=None, metavar="URL", help="SQLAlchemy URL (default: $IDGLOW_DB_URL or the data dir)"
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="folder of the images (default: $IDGLOW_DATA_DIR, else the SQLite file's folder, else ./data)",
    )


def _open(args: argparse.Namespace, migrate: bool = True):
    from annotation.store.settings import resolve_data_dir, resolve_db_url
    from db.engine import make_engine, make_session_factory
    from db.migrate import upgrade

    url = resolve_db_url(args.db, args.data_dir)
    engine = make_engine(url)
    if migrate:
        upgrade(engine)
    return engine, make_session_factory(engine), resolve_data_dir(args.data_dir, url)


def run_db_upgrade(args: argparse.Namespace) -> int:
    """``idglow db upgrade``: migrate the database to the latest schema."""
    from db.migrate import current_revision

    engine, _, _ = _open(args)
    print(f"database at revision {current_revision(engine)}")
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("repeat: ") != password:
            raise InputError("the two passwords differ")
    return password


def run_users_add(args: argparse.Namespace) -> int:
    """``idglow users add NAME``: create a user; the password is prompted twice or read from stdin."""
    from annotation.store.users import create_user

    password = _read_password(args)
    _, sessions, _ = _open(args)
    with sessions() as session:
        user = create_user(session, args.name, password, args.role)
    print(f"added user {user.username} ({user.role.value}), id {user.id}")
    return 0


def run_users_list(args: argparse.Namespace) -> int:
    """``idglow users list``: every user with id, role and whether they may sign in."""
    from annotation.store.users import list_users

    _, sessions, _ = _open(args)
    with sessions() as session:
        users = list_users(session)
    print(f"{'id':>4}  {'name':<24} {'role':<11} status")
    for user in users:
        print(f"{user.id:>4}  {user.username:<24} {user.role.value:<11} {'active' if user.active else 'deactivated'}")
    return 0


def _show(user) -> str:  # noqa: ANN001
    return f"{user.username} ({user.role.value}, {'active' if user.active else 'deactivated'})"


def run_users_set_role(args: argparse.Namespace) -> int:
    """``idglow users set-role NAME ROLE``: change a role (the last active admin stays admin)."""
    from annotation.store.users import set_role

    _, sessions, _ = _open(args)
    with sessions() as session:
        print(f"user {_show(set_role(session, args.name, args.role))}")
    return 0


def run_users_set_active(args: argparse.Namespace) -> int:
    """``idglow users activate|deactivate NAME``: let a user sign in again, or end their sessions and stop
    them signing in (the last active admin cannot be deactivated)."""
    from annotation.store.users import set_active

    _, sessions, _ = _open(args)
    with sessions() as session:
        print(f"user {_show(set_active(session, args.name, args.active))}")
    return 0


def run_users_reset_password(args: argparse.Namespace) -> int:
    """``idglow users reset-password NAME``: a new password, prompted twice or read from stdin."""
    from annotation.store.users import reset_password

    password = _read_password(args)
    _, sessions, _ = _open(args)
    with sessions() as session:
        print(f"new password set for user {_show(reset_password(session, args.name, password))}")
    return 0


def run_models_add(args: argparse.Namespace) -> int:
    """``idglow models add NAME``: register a model version (adapter folder, base model, notes)."""
    from annotation.store.candidates import register_model_version
    from annotation.store.model_versions import list_model_versions, remove_model_version

    _, sessions, _ = _open(args)
    with sessions() as session:
        replaced = args.overwrite and any(v.name == args.name.strip() for v in list_model_versions(session))
        if replaced:  # refused (and nothing changed) when the version has generations
            remove_model_version(session, args.name.strip())
        mv = register_model_version(
            session, args.name, args.adapter, base_model=args.base_model, notes=args.notes
        )
    print(f"{'replaced' if replaced else 'added'} model version {mv.name}, id {mv.id}")
    return 0


def run_models_list(args: argparse.Namespace) -> int:
    """``idglow models list``: every version with its adapter folder and number of generations."""
    from annotation.store.model_versions import list_model_versions

    _, sessions, _ = _open(args)
    with sessions() as session:
        versions = list_model_versions(session)
    if not versions:
        print("no model versions (add one with `idglow models add NAME --adapter DIR`)")
        return 0
    for v in versions:
        flags = " (default)" if v.is_default else ""
        flags += "" if v.servable else " (adapter folder missing: not served)"
        print(f"{v.name}{flags}\tadapter: {v.adapter_dir or '-'}\tgenerations: {v.generations}")
    if not any(v.is_default for v in versions):
        print("no default set: the app offers the model it serves itself first "  # stderr: stdout is the table
              "(choose one with `idglow models default NAME`)", file=sys.stderr)
    return 0


def run_models_remove(args: argparse.Namespace) -> int:
    """``idglow models remove NAME``: delete a version that has no generations."""
    from annotation.store.model_versions import remove_model_version

    _, sessions, _ = _open(args)
    with sessions() as session:
        remove_model_version(session, args.name)
    print(f"removed model version {args.name}")
    return 0


def run_models_default(args: argparse.Namespace) -> int:
    """``idglow models default NAME``: make it the version the app offers first."""
    from annotation.store.model_versions import set_default_model_version

    _, sessions, _ = _open(args)
    with sessions() as session:
        set_default_model_version(session, args.name)
    print(f"model version {args.name} is now offered first (restart the app to see it)")
    return 0


def _parse_since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(
            f"invalid --since {text!r}: use an ISO date such as 2025-01-31 or 2025-01-31T12:00"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def run_export(args: argparse.Namespace) -> int:
    """``idglow export``, with a progress bar."""
    from tqdm import tqdm

    from annotation.store.export import export_preferences
    from annotation.store.users import get_user_by_name
    from idglow.commands.common import replacing

    since = _parse_since(args.since)
    _, sessions, data_dir = _open(args)
    with (replacing(args.out, "manifest.json", args.overwrite), sessions() as session,
          tqdm(unit="pair", desc="export", disable=args.quiet) as bar):
        user_id = get_user_by_name(session, args.user).id if args.user else None
        session.commit()

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = export_preferences(
            session,
            args.out,
            data_dir=data_dir,
            format=args.format,
            with_images=args.with_images,
            tie_policy=args.tie_policy,
            min_votes=args.min_votes,
            since=since,
            requested_by=user_id,
            progress=progress,
        )
    splits = ", ".join(f"{k} {v}" for k, v in result.rows_per_split.items()) or "none"
    print(f"exported {result.rows} rows ({splits}) to {result.out_dir}")
    return 0


def run_demo_data(args: argparse.Namespace) -> int:
    """``idglow demo-data``: seed the store and print the users, their password and the true model order."""
    from annotation.store.demo import (
        DEMO_PASSWORD,
        demo_references,
        pattern_images,
        seed_demo_data,
        tiny_model_images,
    )
    from idglow.faces.dlib_backend import DlibAnalyzer

    _, sessions, data_dir = _open(args)
    if not args.more and _demo_generations(sessions):
        print(f"demo data already in this store ({_demo_generations(sessions)} generations of the demo models): "
              "nothing added (--more adds another batch)")
        print(f"data dir: {data_dir}; users: annotator1.., researcher; password: {DEMO_PASSWORD}")
        return 0
    images = tiny_model_images(8, args.seed) if args.images == "tiny" else pattern_images(8, args.seed)
    references = demo_references(DlibAnalyzer())
    with sessions() as session:
        summary = seed_demo_data(
            session,
            data_dir,
            candidates=args.candidates,
            votes=args.votes,
            annotators=args.annotators,
            images=images,
            seed=args.seed,
            references=references,
        )
    print(
        f"demo data: {summary.generations} generations, {summary.candidates} candidates, "
        f"{summary.comparisons} comparisons ({summary.gold} gold), {summary.votes} votes"
    )
    print(f"people: {len(references)} portraits cropped from bundled photos; data dir: {data_dir}")
    print(f"users: {', '.join(summary.annotators)}, researcher; password: {summary.password}")
    order = " > ".join(sorted(summary.models, key=summary.models.get, reverse=True))
    print(f"true model order: {order}")
    return 0


def _demo_generations(sessions) -> int:  # noqa: ANN001
    """How many generations the demo model versions have in the store (0: no demo data yet)."""
    from annotation.store.demo import DEMO_MODELS
    from annotation.store.model_versions import list_model_versions

    with sessions() as session:
        return sum(v.generations for v in list_model_versions(session) if v.name in DEMO_MODELS)


def run_train_from_db(args: argparse.Namespace) -> int:
    """Export the store with images into a temporary folder, then run ``idglow train dpo`` on it."""
    import tempfile

    from annotation.store.export import export_preferences
    from idglow.commands import train

    _, sessions, data_dir = _open(args)
    with tempfile.TemporaryDirectory(prefix="idglow-dpo-") as tmp:
        out = Path(tmp) / "export"
        with sessions() as session:
            result = export_preferences(session, out, data_dir=data_dir, with_images=True,
                                        min_votes=args.min_votes)
        print(f"exported {result.rows} rows from the database for training")
        args.set = [*args.set, f"train_data={out}"]
        args.stage = "dpo"
        return train.run(args)


def _command_group(subparsers, name: str):
    """``idglow NAME ACTION``: a command whose actions are sub-commands."""
    group = subparsers.add_parser(name, help=COMMANDS[name]).add_subparsers(dest=f"{name}_command", metavar="ACTION")
    group.required = True
    return group


def _register_db(subparsers) -> None:  # noqa: ANN001
    db_sub = _command_group(subparsers, "db")
    up = db_sub.add_parser("upgrade", help="apply the schema migrations")
    _add_db(up)
    up.set_defaults(func=run_db_upgrade)


ROLES = ["annotator", "researcher", "admin"]


def _register_users(subparsers) -> None:  # noqa: ANN001
    users_sub = _command_group(subparsers, "users")
    add = users_sub.add_parser("add", help="add a user (password prompted, or read from stdin)")
    add.add_argument("name", help="user name (unique)")
    add.add_argument("--role", choices=ROLES, default="annotator",
                     help="annotator: votes; researcher: also the Research tab and exports; admin: everything")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    add.set_defaults(func=run_users_add)
    ls = users_sub.add_parser("list", help="list the users with their roles and status")
    ls.set_defaults(func=run_users_list)
    role = users_sub.add_parser("set-role", help="change a user's role (an admin must remain)")
    role.add_argument("name", help="user name")
    role.add_argument("role", choices=ROLES, help="the new role")
    role.set_defaults(func=run_users_set_role)
    for action, active, text in (("activate", True, "let a deactivated user sign in again"),
                                 ("deactivate", False, "stop a user signing in (an admin must remain)")):
        p = users_sub.add_parser(action, help=text)
        p.add_argument("name", help="user name")
        p.set_defaults(func=run_users_set_active, active=active)
    reset = users_sub.add_parser("reset-password", help="set a new password (prompted, or read from stdin)")
    reset.add_argument("name", help="user name")
    reset.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    reset.set_defaults(func=run_users_reset_password)
    for parser in (add, ls, role, reset, *(users_sub.choices[a] for a in ("activate", "deactivate"))):
        _add_db(parser)


def _register_models(subparsers) -> None:  # noqa: ANN001
    models_sub = _command_group(subparsers, "models")
    add = models_sub.add_parser(
        "add", help="register a model version",
        description="Register a model version: an adapter folder the app serves on its base model, beside the "
                    "others. With --overwrite, a version of the same name that has no generations yet is replaced.")
    add.add_argument("name", help="version name shown in the app and the leaderboard, e.g. dpo-v1")
    add.add_argument(
        "--adapter", default=None, metavar="DIR",
        help="adapter folder saved with save_pretrained, e.g. runs/dpo/adapter (default: none, the base model)"
    )
    add.add_argument("--base-model", default=None, metavar="ID|DIR",
                     help="the base model the adapter was trained on, recorded for reference (default: not recorded)")
    add.add_argument("--notes", default=None, metavar="TEXT", help="free text kept with the version (default: none)")
    add.add_argument("--overwrite", action="store_true",
                     help="replace a version of this name that has no generations (e.g. rerunning a script)")
    _add_db(add)
    add.set_defaults(func=run_models_add)
    ls = models_sub.add_parser("list", help="list the registered versions (the default is marked)")
    _add_db(ls)
    ls.set_defaults(func=run_models_list)
    rm = models_sub.add_parser("remove", help="remove a version that has no generations")
    rm.add_argument("name", help="version name")
    _add_db(rm)
    rm.set_defaults(func=run_models_remove)
    default = models_sub.add_parser("default", help="make a version the one the app offers first")
    default.add_argument("name", help="version name")
    _add_db(default)
    default.set_defaults(func=run_models_default)


def _register_export(subparsers) -> None:  # noqa: ANN001
    p = subparsers.add_parser(
        "export", help=COMMANDS["export"],
        description="Write the voted comparisons as a preference dataset: Pick-a-Pic v2 columns (caption, jpg_0, "
                    "jpg_1, label_0, label_1, ...) plus the group columns (task, references, per-person identity "
                    "choices, texture, artifacts, strength, faces, agreement, a stable split), a dataset card "
                    "(README.md) and badcases.jsonl. `idglow train dpo` trains on the folder.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must be empty or absent)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    p.add_argument("--format", choices=["parquet", "jsonl"], default="parquet", help="file format of the rows")
    p.add_argument("--with-images", action="store_true",
                   help="embed the image bytes (jpg_0, jpg_1 and the references; needed to train on the export)")
    p.add_argument("--tie-policy", choices=["drop", "half"], default="half",
                   help="ties on overall: half (labels 0.5/0.5, kept for the per-person answers) or drop")
    p.add_argument("--min-votes", type=int, default=1, metavar="N",
                   help="only comparisons with at least N votes")
    p.add_argument(
        "--since", default=None, metavar="DATE", help="only comparisons voted on at or after DATE (UTC)"
    )
    p.add_argument("--user", default=None, help="export on behalf of this user (must be researcher or admin)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_db(p)
    p.set_defaults(func=run_export)


def _register_demo_data(subparsers) -> None:  # noqa: ANN001
    p = subparsers.add_parser(
        "demo-data", help=COMMANDS["demo-data"],
        description="Fill a database with a demo to try every tab and command: three model versions of known "
                    "quality, generations of people cropped from bundled photos, comparisons with gold answers, "
                    "annotators who vote with known accuracy, and a researcher. Prints the users, their password "
                    "and the true model order (the leaderboard should find it). Running it again on a store that "
                    "holds demo data adds nothing unless --more is given.")
    p.add_argument("--candidates", type=int, default=200, metavar="N", help="candidate images to generate")
    p.add_argument("--votes", type=int, default=1000, metavar="M", help="votes to cast, spread over the annotators")
    p.add_argument("--annotators", type=int, default=5, metavar="K", help="annotator accounts to create")
    p.add_argument(
        "--images",
        choices=["tiny", "pattern"],
        default="tiny",
        help="images from the tiny untrained pipeline or procedural patterns",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the images, votes and pairings")
    p.add_argument("--more", action="store_true",
                   help="add another batch to a store that already holds demo data (default: leave it as it is)")
    _add_db(p)
    p.set_defaults(func=run_demo_data)


def _register_train_from_db(subparsers) -> None:  # noqa: ANN001
    p = subparsers.add_parser(
        "train-from-db", help=COMMANDS["train-from-db"],
        description="Export the preference store with images into a temporary folder (as `idglow export "
                    "--with-images`) and run `idglow train dpo` on it with the given config; the folder is deleted "
                    "afterwards. The options are those of `idglow train dpo`; train_data is set to the export.")
    from idglow.commands.train import add_training_arguments

    add_training_arguments(p, "dpo")
    p.add_argument("--min-votes", type=int, default=1, metavar="N", help="only comparisons with at least N votes")
    _add_db(p)
    p.set_defaults(func=run_train_from_db)


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (found on the path and not blocked)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
        return False


def _missing_store_modules() -> list[str]:
    return [m for m in STORE_MODULES if not _installed(m)]


def run_not_installed(args: argparse.Namespace) -> int:
    """A preference-store command without the app extra: say what to install."""
    raise InputError(f"`idglow {args.command}` needs {', '.join(args.missing)}, which the app extra installs: "
                     f"{APP_EXTRA_HINT}")


def _register_not_installed(subparsers, missing: list[str]) -> None:  # noqa: ANN001
    """Each preference-store command, listed with what to install; running it says so and exits 2."""
    for name, text in COMMANDS.items():
        p = subparsers.add_parser(name, help=f"{text} [needs {APP_EXTRA_HINT}]",
                                  description=f"{text[0].upper()}{text[1:]}. Needs {', '.join(missing)}, "
                                              f"which are not installed: {APP_EXTRA_HINT}.")
        p.set_defaults(func=run_not_installed, missing=missing, takes_any_arguments=True)


def register(subparsers) -> None:  # noqa: ANN001
    """Add the preference-store commands to the ``idglow`` parser's sub-commands (without the app extra's
    modules, each is listed with what to install)."""
    missing = _missing_store_modules()
    if missing:
        _register_not_installed(subparsers, missing)
        return
    for add_commands in (
        _register_db,
        _register_users,
        _register_models,
        _register_export,
        _register_demo_data,
        _register_train_from_db,
    ):
        add_commands(subparsers)


def main(argv: list[str] | None = None) -> int:
    """``idglow`` with these commands registered (also when the package's entry points are not installed)."""
    from idglow.cli import main as idglow_main

    return idglow_main(argv, extra=[register])
