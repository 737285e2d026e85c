"""Where the data lives: one place that the CLI and the app both use."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "IDGLOW_DATA_DIR"
DB_URL_ENV = "IDGLOW_DB_URL"
DB_FILENAME = "idglow.db"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``data_dir`` if given, else ``$IDGLOW_DATA_DIR``, else ``./data``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir)
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


def resolve_db_url(url: str | None = None, data_dir: str | os.PathLike[str] | None = None) -> str:
    """``url`` if given, else ``$IDGLOW_DB_URL``, else ``sqlite:///<data dir>/idglow.db``."""
    if url:
        return url
    env = os.environ.get(DB_URL_ENV)
    if env:
        return env
    return f"sqlite:///{(resolve_data_dir(data_dir) / DB_FILENAME).resolve()}"
