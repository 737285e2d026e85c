"""Where the data lives: one place that the CLI and the app both use."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "IDGLOW_DATA_DIR"
DB_URL_ENV = "IDGLOW_DB_URL"
DB_FILENAME = "idglow.db"
DEFAULT_DATA_DIR = "data"


def sqlite_folder(url: str | None) -> Path | None:
    """The folder of a SQLite database file named by ``url`` (None for other databases and in-memory ones)."""
    if not url or not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database or ""
    if database in ("", ":memory:") or database.startswith("file:") or "mode=memory" in url:
        return None
    return Path(database).parent


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None, db_url: str | None = None) -> Path:
    """``data_dir`` if given, else ``$IDGLOW_DATA_DIR``, else the folder of the SQLite file of ``db_url``
    (default ``$IDGLOW_DB_URL``; the images live beside the database), else ``./data``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir)
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    return sqlite_folder(db_url or os.environ.get(DB_URL_ENV)) or Path(DEFAULT_DATA_DIR)


def resolve_db_url(url: str | None = None, data_dir: str | os.PathLike[str] | None = None) -> str:
    """``url`` if given, else ``$IDGLOW_DB_URL``, else ``sqlite:///<data dir>/idglow.db``."""
    if url:
        return url
    env = os.environ.get(DB_URL_ENV)
    if env:
        return env
    return f"sqlite:///{(resolve_data_dir(data_dir) / DB_FILENAME).resolve()}"
