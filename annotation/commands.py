"""``idglow`` sub-commands of the preference store: ``db upgrade``, ``users add``, ``models
add|list|remove|default``, ``export``, ``demo-data`` and ``train-from-db``. Every command takes ``--db URL``
(default: $IDGLOW_DB_URL, else the SQLite file in the data dir) and ``--data-dir`` (default:
$IDGLOW_DATA_DIR, else the folder of the SQLite file, else ./data). Heavy imports (SQLAlchemy, pyarrow)
happen inside the commands.

They reach the ``idglow`` command through the ``idglow.commands`` entry point (see pyproject.toml);
:func:`main` runs ``idglow`` with them registered whether or not the package metadata is installed."""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import datetime, timezone
from pathlib import Path

from idglow.errors import InputError


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db", default=None, metavar="URL", help="SQLAlchemy URL (default: $IDGLOW_DB_URL or the data dir)"
    )
    p.add_argument(
        "--data-dir",
        default=None,
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


def run_models_add(args: argparse.Namespace) -> int:
    """``idglow models add NAME``: register a model version (adapter folder, base model, notes)."""
    from annotation.store.candidates import register_model_version

    _, sessions, _ = _open(args)
    with sessions() as session:
        mv = register_model_version(
            session, args.name, args.adapter, base_model=args.base_model, notes=args.notes
        )
    print(f"added model version {mv.name}, id {mv.id}")
    return 0


def run_models_list(args: argparse.Namespace) -> int:
    """``idglow models list``: every version with its adapter folder and number of generations."""
    from annotation.store.model_versions import list_model_versions

    _, sessions, _ = _open(args)
    with sessions() as session:
        versions = list_model_versions(session)
    if not versions:
        print("no model versions (add one with `idglow models add NAME --adapter DIR`)")
    for v in versions:
        flags = " (default)" if v.is_default else ""
        flags += "" if v.servable else " (adapter folder missing: not served)"
        print(f"{v.name}{flags}\tadapter: {v.adapter_dir or '-'}\tgenerations: {v.generations}")
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

    since = _parse_since(args.since)
    _, sessions, data_dir = _open(args)
    with sessions() as session, tqdm(unit="pair", desc="export", disable=args.quiet) as bar:
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
    from annotation.store.demo import demo_references, pattern_images, seed_demo_data, tiny_model_images
    from idglow.faces.dlib_backend import DlibAnalyzer

    images = tiny_model_images(8, args.seed) if args.images == "tiny" else pattern_images(8, args.seed)
    references = demo_references(DlibAnalyzer())
    _, sessions, data_dir = _open(args)
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


def _command_group(subparsers, name: str, help: str):
    """``idglow NAME ACTION``: a command whose actions are sub-commands."""
    group = subparsers.add_parser(name, help=help).add_subparsers(dest=f"{name}_command", metavar="ACTION")
    group.required = True
    return group


def _register_db(subparsers) -> None:  # noqa: ANN001
    db_sub = _command_group(subparsers, "db", "manage the preference database")
    up = db_sub.add_parser("upgrade", help="apply the schema migrations")
    _add_db(up)
    up.set_defaults(func=run_db_upgrade)


def _register_users(subparsers) -> None:  # noqa: ANN001
    users_sub = _command_group(subparsers, "users", "manage annotation users")
    add = users_sub.add_parser("add", help="add a user (password prompted, or read from stdin)")
    add.add_argument("name")
    add.add_argument("--role", choices=["annotator", "researcher", "admin"], default="annotator")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    _add_db(add)
    add.set_defaults(func=run_users_add)


def _register_models(subparsers) -> None:  # noqa: ANN001
    models_sub = _command_group(subparsers, "models", "manage model versions")
    add = models_sub.add_parser("add", help="register a model version")
    add.add_argument("name")
    add.add_argument(
        "--adapter", default=None, metavar="DIR", help="adapter folder saved with save_pretrained"
    )
    add.add_argument("--base-model", default=None, help="base model id or path")
    add.add_argument("--notes", default=None)
    _add_db(add)
    add.set_defaults(func=run_models_add)
    ls = models_sub.add_parser("list", help="list the registered versions (the default is marked)")
    _add_db(ls)
    ls.set_defaults(func=run_models_list)
    rm = models_sub.add_parser("remove", help="remove a version that has no generations")
    rm.add_argument("name")
    _add_db(rm)
    rm.set_defaults(func=run_models_remove)
    default = models_sub.add_parser("default", help="make a version the one the app offers first")
    default.add_argument("name")
    _add_db(default)
    default.set_defaults(func=run_models_default)


def _register_export(subparsers) -> None:  # noqa: ANN001
    p = subparsers.add_parser("export", help="export the preferences (Pick-a-Pic v2 columns + group columns)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must be empty or absent)")
    p.add_argument("--format", choices=["parquet", "jsonl"], default="parquet")
    p.add_argument("--with-images", action="store_true", help="embed image bytes")
    p.add_argument("--tie-policy", choices=["drop", "half"], default="half")
    p.add_argument("--min-votes", type=int, default=1, metavar="N")
    p.add_argument(
        "--since", default=None, metavar="DATE", help="only comparisons voted on at or after DATE (UTC)"
    )
    p.add_argument("--user", default=None, help="export on behalf of this user (must be researcher or admin)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_db(p)
    p.set_defaults(func=run_export)


def _register_demo_data(subparsers) -> None:  # noqa: ANN001
    p = subparsers.add_parser("demo-data", help="fill a database with synthetic generations, users and votes")
    p.add_argument("--candidates", type=int, default=200, metavar="N")
    p.add_argument("--votes", type=int, default=1000, metavar="M")
    p.add_argument("--annotators", type=int, default=5, metavar="K")
    p.add_argument(
        "--images",
        choices=["tiny", "pattern"],
        default="tiny",
        help="images from the tiny untrained pipeline or procedural patterns",
    )
    p.add_argument("--seed", type=int, default=0)
    _add_db(p)
    p.set_defaults(func=run_demo_data)


def _register_train_from_db(subparsers) -> None:  # noqa: ANN001
    p = subparsers.add_parser(
        "train-from-db", help="export the preference store (with images) to a temporary folder and run DPO on it"
    )
    p.add_argument("--config", metavar="YAML", help="DPO config file (see configs/dpo.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override an option")
    p.add_argument("--faces", choices=["dlib", "insightface"], default="dlib",
                   help="face backend of the identity embeddings")
    p.add_argument("--face-root", metavar="DIR", help="insightface: folder that holds models/<pack>/")
    p.add_argument("--min-votes", type=int, default=1, metavar="N")
    _add_db(p)
    p.set_defaults(func=run_train_from_db)


def register(subparsers) -> None:  # noqa: ANN001
    """Add the preference-store commands to the ``idglow`` parser's sub-commands."""
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
