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

from tests.browser.conftest import PASSWORD, serve_app, stored_votes

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
        create_user(session, "ann2", PASSWORD, "annotator")
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
        assert stored_votes(data, "ann") == []

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
        votes = stored_votes(data, "ann")
        assert len(votes) == 1 and votes[0].overall in ("a", "b") and votes[0].texture in ("a", "b")


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
        note = page.locator("#gen-run-note")
        expect(note).to_contain_text("used as written and the Scene is not", timeout=30_000)
        # Changes made before the typing (the example's cards and target ages, then its photo check, which writes
        # them back) may be answered after the hint is shown: the hint stays (late empty notes once replaced it)
        expect(page.locator("#gen-photo-status")).to_contain_text("people ready", timeout=60_000)
        expect(note).to_contain_text("used as written and the Scene is not")
        page.locator("#gen-age-0 input").fill("30")  # one more change after the hint: both hints now apply
        page.locator("#gen-age-0 input").press("Tab")
        expect(note).to_contain_text("'Change ages' is the task")
        expect(note).to_contain_text("used as written and the Scene is not")
        page.locator("#gen-age-0 input").fill("")
        page.locator("#gen-age-0 input").press("Tab")
        expect(note).not_to_contain_text("'Change ages' is the task")
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


def test_annotating_on_a_phone_side_by_side_with_the_vote_in_reach(server, browser, shots):
    """At 390×844: A and B side by side, the vote buttons on screen and at least 44 px high, "Vote saved" on
    screen after Submit, and the vote stored."""
    from playwright.sync_api import expect

    url, data = server
    with _page(browser, 390, 844) as page:
        page.goto(url)
        _type_sign_in(page, "ann2", PASSWORD)
        page.locator("#signin-run").click()
        expect(page.locator("#annotate-left img")).to_be_visible(timeout=60_000)
        page.wait_for_timeout(500)
        left, right = page.locator("#annotate-left").bounding_box(), page.locator("#annotate-right").bounding_box()
        assert abs(left["y"] - right["y"]) < 2 and left["x"] + left["width"] <= right["x"] + 1, (left, right)
        page.locator("#annotate-right").scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "journeys-phone-annotate.png"))
        submit = page.locator("#annotate-submit").bounding_box()
        assert submit["y"] >= 0 and submit["y"] + submit["height"] <= 844 and submit["height"] >= 44
        choice = page.locator("#annotate-overall label:has(input)").first
        assert choice.bounding_box()["height"] >= 44
        choice.click()
        page.locator("#annotate-submit").click()
        notice = page.locator("#annotate-notice")
        expect(notice).to_contain_text("Vote saved", timeout=30_000)
        box = notice.bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= 844
        page.screenshot(path=str(shots / "journeys-phone-saved.png"))
        assert len(stored_votes(data, "ann2")) == 1


def _axe_source() -> str:
    """axe-core (npm package ``axe-core``): $IDGLOW_AXE_JS, or node_modules/axe-core/axe.min.js of the checkout."""
    import os

    root = Path(__file__).resolve().parents[2]
    for candidate in (os.environ.get("IDGLOW_AXE_JS"), root / "node_modules" / "axe-core" / "axe.min.js"):
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_text()
    pytest.skip("axe-core is not installed: `npm install axe-core` in the checkout, or set IDGLOW_AXE_JS")


def _axe(page, source: str) -> list[dict]:
    """WCAG 2 A/AA violations axe-core finds on the page as shown: rule id, impact and the offending nodes."""
    page.add_script_tag(content=source)
    found = page.evaluate("""async () => {
        const r = await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa']}});
        return r.violations.map(v => ({id: v.id, impact: v.impact,
                                       nodes: v.nodes.map(n => n.target.join(' ') + ' ' + n.html.slice(0, 80))}));
    }""")
    return found


def test_each_tab_passes_an_automated_accessibility_check(server, browser, shots):
    """axe-core (WCAG 2 A and AA) on Generate, Annotate and Research as their users see them."""
    from playwright.sync_api import expect

    source = _axe_source()
    url, _ = server
    found = {}
    with _page(browser) as page:
        page.goto(url)
        expect(page.locator("#gen-run")).to_be_visible(timeout=30_000)
        found["generate"] = _axe(page, source)
        _type_sign_in(page, "ann", PASSWORD)
        page.locator("#signin-run").click()
        expect(page.locator("#annotate-left img")).to_be_visible(timeout=60_000)
        found["annotate"] = _axe(page, source)
    with _page(browser) as page:
        page.goto(url)
        _type_sign_in(page, "rita", PASSWORD)
        page.locator("#signin-run").click()
        expect(page.locator("#research-counts")).to_contain_text("votes", timeout=60_000)
        found["research"] = _axe(page, source)
    problems = {tab: [(v["id"], node) for v in violations for node in v["nodes"] if not _gradio_own(v["id"], node)]
                for tab, violations in found.items()}
    problems = {tab: p for tab, p in problems.items() if p}
    assert not problems, "\n".join(f"{tab}: {p}" for tab, p in problems.items())


def _gradio_own(rule: str, node: str) -> bool:
    """Violations in Gradio's own markup that the app cannot change: the empty gallery's placeholder carries an
    aria-label on a plain div, and a non-interactive gr.Image wraps its picture in an unnamed button."""
    return ((rule == "aria-prohibited-attr" and 'class="empty' in node and "unpadded_box" in node)
            or (rule == "button-name" and "image-container" in node))
