"""Shared pieces of the browser tests: the real app (``python app.py``) served from a data folder on a free
local port, Debian's chromium through Playwright, and a folder for screenshots."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct-horse-battery"


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


def _app_command(prelude: str) -> list[str]:
    """``python app.py``, or with ``prelude`` (Python code) run in the app's process before app.py."""
    if not prelude:
        return [sys.executable, "app.py"]
    run = "import runpy, sys\nsys.argv = ['app.py', *sys.argv[1:]]\nrunpy.run_path('app.py', run_name='__main__')"
    return [sys.executable, "-c", f"{prelude}\n{run}"]


@contextlib.contextmanager
def serve_app(data: Path, *args: str, prelude: str = "") -> Iterator[str]:
    """``python app.py --data-dir DATA ARGS`` on a free port until the block ends; yields its URL. ``prelude``:
    Python code run in the app's process before app.py (e.g. a changed declaration). The server's output goes to
    ``DATA/app.log``; the app and every process it started end with the block."""
    from app_fixtures import free_port

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with open(data / "app.log", "w") as log:
        proc = subprocess.Popen([*_app_command(prelude), "--data-dir", str(data), "--port", str(port), *args],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_http(f"http://127.0.0.1:{port}/", proc)
            yield f"http://127.0.0.1:{port}/"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):  # what the app started (its face process) goes too
                os.killpg(proc.pid, signal.SIGKILL)


def fill_numbers(boxes: list[tuple], attempts: int = 3) -> None:
    """Type each value into its number box ((Playwright locator, value) pairs) and leave it with Tab, then check that every box
    still holds its value and type again where one does not: a box typed into while its section is still opening
    can be redrawn with the default, and the value a run is sent is the one the box holds."""
    for _ in range(attempts):
        for box, value in boxes:
            box.fill(str(value))
            box.press("Tab")
        if all(box.input_value() == str(value) for box, value in boxes):
            return
    raise AssertionError(f"number boxes did not keep their values: {[b.input_value() for b, _ in boxes]}")


def sign_in(page, url: str, user: str) -> None:
    """Open ``url`` and sign in as ``user`` (password PASSWORD) with the Sign in button."""
    page.goto(url)
    page.get_by_text("Sign in (annotators and researchers)").click()
    page.locator("#signin-user textarea, #signin-user input").first.fill(user)
    page.locator("#signin-password input").fill(PASSWORD)
    page.locator("#signin-run").click()
    page.get_by_text(f"Signed in as {user}").wait_for(timeout=30_000)


@pytest.fixture(scope="module")
def chromium():
    """Debian's chromium, one per test module: it and every process it started end with the module."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def browser(chromium):
    """The module's chromium; every context a test opens (with its pages and their renderer processes) is closed
    when the test ends, passed or failed."""
    yield chromium
    for context in list(chromium.contexts):
        with contextlib.suppress(Exception):  # a context whose page crashed still goes
            context.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory):
    folder = Path(os.environ.get("IDGLOW_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def stored_votes(data: Path, user: str) -> list:
    """The votes ``user`` has stored in the app's SQLite file under ``data``, oldest first: each with its
    comparison_id, shown_left_id and an attribute per declared question (None when unanswered)."""
    from types import SimpleNamespace

    from sqlalchemy import select

    from annotation.store.votes import stored_votes as all_votes
    from db.engine import make_engine, make_session_factory
    from db.models import User
    from idglow.preferences import declared

    engine = make_engine(f"sqlite:///{data / 'idglow.db'}")
    try:
        with make_session_factory(engine)() as session:
            user_id = session.scalar(select(User.id).where(User.username == user))
            votes = [v for v in all_votes(session) if v["user_id"] == user_id]
    finally:
        engine.dispose()
    return [SimpleNamespace(comparison_id=v["comparison_id"], shown_left_id=v["shown_left_id"],
                            **{q.name: v.get(q.name) for q in declared()})
            for v in sorted(votes, key=lambda v: v["id"])]
