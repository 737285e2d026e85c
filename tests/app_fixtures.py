"""Run the app in a background thread on a free local port (tests and examples)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningApp:
    """An app served by :func:`running_app`: its URL, services and Blocks."""

    url: str
    services: object  # AppServices
    demo: object  # gr.Blocks


@contextlib.contextmanager
def running_app(data_dir: str | Path, users: dict[str, tuple[str, str]] | None = None, downloads=None,
                **settings) -> Iterator[RunningApp]:
    """The real app (tiny model, dlib, SQLite in ``data_dir``) served on 127.0.0.1. ``users``: name →
    (password, role), created before the server starts; ``downloads``: the app's PrivateDownloads (e.g. on a
    test's clock) instead of its own."""
    from annotation.store.users import create_user
    from annotation.ui.blocks import build_app, launch_options
    from annotation.ui.settings import AppSettings
    from annotation.ui.wiring import build_services

    config = AppSettings(data_dir=str(data_dir), port=free_port(), **settings)
    services, _ = build_services(config)
    if downloads is not None:
        services.downloads = downloads
    with services.auth.sessions() as session:
        for name, (password, role) in (users or {}).items():
            create_user(session, name, password, role)
    demo = build_app(services)
    options = launch_options("127.0.0.1", config.port, config.max_upload_mb, services, config.max_per_visitor)
    demo.launch(prevent_thread_lock=True, **options)
    try:
        yield RunningApp(f"http://127.0.0.1:{config.port}/", services, demo)
    finally:
        demo.close()
        services.close()
