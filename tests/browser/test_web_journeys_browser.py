"""What visitors, annotators and researchers see when they make a mistake or sign in, in Debian's chromium
(Playwright) against `python app.py`: mistakes are said in words where they were made and no Gradio "Error"
badge covers a photo, a candidate or a form; a sign-in shows the person's work on their tab at once.

Stored votes are checked in the SQLite database. Screenshots go to $IDGLOW_SCREENSHOT_DIR (default: a temporary
folder).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest

from tests.browser.conftest import PASSWORD, serve_app

pytestmark = pytest.mark.browser

BADGES = "[data-testid='status-tracker'] .error"  # Gradio's red "Error" badge over a component
TOASTS = "[data-testid='toast-body']"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from store_fixtures import make_store

    from annotation.store.demo import pattern_images, seed_demo_data
    from annotation.store.users import create_user

    data = tmp_path_factory.mktemp("journeys-data")
    store = make_store(data)
    with store.sessions() as session:
        seed_demo_data(session, data, candidates=16, votes=12, annotators=2, images=pattern_images(6), gold_rate=0.0)
        create_user(session, "ann", PASSWORD, "annotator")
        create_user(session, "rita", PASSWORD, "researcher")
    store.engine.dispose()
    with serve_app(data) as url:
        yield url, data


@contextlib.contextmanager
def _page(browser, width: int = 1366, height: int = 768):
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        yield context.new_page()
    finally:
        context.close()


def _visible_badges(page) -> int:
    return page.locator(BADGES).evaluate_all("els => els.filter(e => e.offsetParent !== null).length")


def _votes(data: Path, user: str) -> list:
    from sqlalchemy import select

    from db.engine import make_engine, make_session_factory
    from db.models import User, Vote

    engine = make_engine(f"sqlite:///{data / 'idglow.db'}")
    try:
        with make_session_factory(engine)() as session:
            return session.scalars(select(Vote).join(User, User.id == Vote.user_id)
                                   .where(User.username == user).order_by(Vote.id)).all()
    finally:
        engine.dispose()


def _visitor_generations(data: Path) -> int:
    from sqlalchemy import func, select

    from db.engine import make_engine, make_session_factory
    from db.models import Generation

    engine = make_engine(f"sqlite:///{data / 'idglow.db'}")
    try:
        with make_session_factory(engine)() as session:
            return session.scalar(select(func.count()).select_from(Generation)
                                  .where(Generation.visitor_id.is_not(None)))
    finally:
        engine.dispose()


def _type_sign_in(page, user: str, password: str) -> None:
    if not page.locator("#signin-password input").is_visible():
        page.get_by_text("Sign in (annotators and researchers)").click()
    page.locator("#signin-user textarea, #signin-user input").first.fill(user)
    page.locator("#signin-password input").fill(password)


def test_generate_with_no_photos_says_so_under_the_button(server, browser, shots):
    from playwright.sync_api import expect

    url, _ = server
    with _page(browser) as page:
        page.goto(url)
        page.locator("#gen-run").click()
        expect(page.locator("#gen-run-note")).to_contain_text("Add 1–6 people first", timeout=30_000)
        page.wait_for_timeout(500)
        assert _visible_badges(page) == 0
        page.screenshot(path=str(shots / "journeys-generate-no-photos.png"))
        page.locator("#gen-files").click(trial=True)  # the upload is not covered by anything


def test_wrong_password_then_sign_in_takes_the_annotator_to_the_pair(server, browser, shots):
    """A wrong password is said under the form (no badge on the boxes, which stay usable); the right one moves
    the annotator from Generate to the pair, with the old message gone. Enter on an empty form asks for a choice
    beside the buttons, the pair stays, nothing is stored; then a choice is stored."""
    from playwright.sync_api import expect

    url, data = server
    with _page(browser) as page:
        page.goto(url)
        _type_sign_in(page, "ann", "not-the-password")
        page.locator("#signin-run").click()
        expect(page.locator("#signin-notice")).to_contain_text("Not signed in", timeout=30_000)
        expect(page.locator(TOASTS).first).to_contain_text("wrong user name or password")
        assert _visible_badges(page) == 0
        page.screenshot(path=str(shots / "journeys-wrong-password.png"))
        page.locator("#signin-password input").click()  # fails if a badge covers the box
        page.locator("#signin-password input").fill(PASSWORD)
        page.locator("#signin-password input").press("Enter")
        expect(page.locator("#signin-bar")).to_contain_text("Signed in as ann", timeout=30_000)
        expect(page.get_by_role("tab", name="Annotate")).to_have_attribute("aria-selected", "true")
        expect(page.locator("#annotate-left img")).to_be_visible(timeout=30_000)
        expect(page.locator(TOASTS)).to_have_count(0)
        expect(page.locator("#signin-notice")).to_be_hidden()

        page.locator("#annotate-progress").click()
        page.keyboard.press("Enter")
        expect(page.locator("#annotate-notice")).to_contain_text("Choose A, B, tie or both bad first",
                                                                 timeout=30_000)
        page.wait_for_timeout(500)
        assert _visible_badges(page) == 0
        expect(page.locator("#annotate-left img")).to_be_visible()
        expect(page.locator("#annotate-right img")).to_be_visible()
        page.screenshot(path=str(shots / "journeys-empty-vote.png"))
        assert _votes(data, "ann") == []

        page.locator("#annotate-progress").click()
        page.keyboard.press("a")
        page.keyboard.press("y")
        page.keyboard.press("b")
        summary = page.locator("#answer-summary")  # every key's answer where the eyes are
        expect(summary).to_contain_text("Overall A")
        expect(summary).to_contain_text("texture B")
        expect(summary).to_contain_text("artifacts –")
        assert summary.bounding_box()["y"] + summary.bounding_box()["height"] <= 768
        page.screenshot(path=str(shots / "journeys-answer-summary.png"))
        page.keyboard.press("Enter")
        page.keyboard.press("x")  # pressed while the next pair is on its way: not kept for the next pair
        expect(page.locator("#annotate-notice")).to_contain_text("Vote saved", timeout=30_000)
        page.wait_for_timeout(500)
        assert page.locator("#annotate-overall input:checked").count() == 0
        expect(summary).to_contain_text("Overall –")
        votes = _votes(data, "ann")
        assert len(votes) == 1 and votes[0].overall.value in ("a", "b") and votes[0].texture.value in ("a", "b")


def test_research_shows_itself_on_sign_in_and_asks_signed_out_visitors_plainly(server, browser, shots):
    from playwright.sync_api import expect

    url, _ = server
    with _page(browser) as page:
        page.goto(url)
        page.get_by_role("tab", name="Research").click()
        expect(page.locator("#research-intro")).to_contain_text("Sign in as a researcher (above) to see this")
        page.wait_for_timeout(1000)
        expect(page.locator(TOASTS)).to_have_count(0)
        assert _visible_badges(page) == 0

        page.get_by_role("tab", name="Generate").click()
        _type_sign_in(page, "rita", PASSWORD)
        page.locator("#signin-run").click()
        expect(page.get_by_role("tab", name="Research")).to_have_attribute("aria-selected", "true", timeout=30_000)
        expect(page.locator("#research-counts")).to_contain_text("votes", timeout=60_000)  # no Refresh pressed
        expect(page.locator("#research-intro")).to_be_hidden()
        assert _visible_badges(page) == 0
        page.screenshot(path=str(shots / "journeys-research-sign-in.png"))


def test_scene_under_a_filled_prompt_and_delete_asks_first(server, browser, shots):
    """A Scene typed while the prompt box is filled is said to be ignored; "Delete my data" deletes nothing
    before the visitor confirms, and then deletes the visitor's generations from the store."""
    from playwright.sync_api import expect

    url, data = server
    with _page(browser) as page:
        page.goto(url)
        page.locator("#gen-example").click()
        expect(page.locator("#gen-card-0")).to_be_visible(timeout=60_000)
        page.locator("#gen-settings").get_by_text("Prompt and image settings").click()
        page.locator("#gen-prompt textarea").fill("three friends on a beach")
        page.locator("#gen-scene textarea, #gen-scene input").first.fill("a snowy mountain hut")
        page.locator("#gen-scene textarea, #gen-scene input").first.blur()
        expect(page.locator("#gen-run-note")).to_contain_text("used as written and the Scene is not", timeout=30_000)
        page.locator("#gen-run").click()
        expect(page.locator("#gen-gallery img").first).to_be_visible(timeout=180_000)
        expect(page.locator("#gen-run-note")).to_have_text("")
        expect(page.locator("#gen-seed")).to_contain_text(re.compile(r"Used seed: \d+"))
        before = _visitor_generations(data)
        assert before >= 1
        page.locator("#gen-delete").click()
        expect(page.locator("#gen-delete-text")).to_contain_text("cannot be undone")
        page.screenshot(path=str(shots / "journeys-delete-confirm.png"))
        page.locator("#gen-delete-no").click()
        expect(page.locator("#gen-delete-yes")).to_be_hidden()
        assert _visitor_generations(data) == before  # nothing deleted without the confirmation
        page.locator("#gen-delete").click()
        page.locator("#gen-delete-yes").click()
        expect(page.locator("#gen-status")).to_contain_text("Deleted", timeout=30_000)
        assert _visitor_generations(data) == before - 1
