"""The app in Debian's chromium (Playwright): visitor, annotator and researcher journeys on `python app.py`.

Screenshots of each tab are saved under $IDGLOW_SCREENSHOT_DIR (default: a temporary folder) and printed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.conftest import PASSWORD, serve_app, sign_in

pytestmark = pytest.mark.browser



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from store_fixtures import make_store

    from annotation.store.demo import pattern_images, seed_demo_data
    from annotation.store.users import create_user

    data = tmp_path_factory.mktemp("browser-data")
    store = make_store(data)
    with store.sessions() as session:  # a store with history, so the leaderboard has models to rank
        seed_demo_data(session, data, candidates=24, votes=40, annotators=3, images=pattern_images(8), gold_rate=0.0)
        create_user(session, "anna", PASSWORD, "annotator")
        create_user(session, "rita", PASSWORD, "researcher")
    store.engine.dispose()
    with serve_app(data) as url:
        yield url, data


def _shot(page, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def test_visitor_annotator_researcher(server, browser, shots, sample_portraits, tmp_path):
    url, data = server
    from playwright.sync_api import expect

    # --- visitor: two portraits → two crops → two candidates with progress, seed and per-person scores → pool
    page = browser.new_context(viewport={"width": 1280, "height": 1600}).new_page()
    page.goto(url)
    expect(page.locator("#idglow-banner")).to_contain_text("Demo model")
    page.locator("#gen-consent input[type=checkbox]").check()
    page.locator("#gen-files input[type=file]").set_input_files(
        [str(sample_portraits["person1"]), str(sample_portraits["person2"])])
    expect(page.locator(".gen-card:visible")).to_have_count(2, timeout=60_000)
    expect(page.locator("#gen-photo-status")).to_contain_text("2 people ready")
    page.get_by_text("Prompt and image settings").click()
    steps = page.get_by_label("number input for Steps")
    steps.fill("40")
    steps.press("Tab")
    page.locator("#gen-run").click()
    page.locator(".progress-text, .progress-level, .eta-bar").first.wait_for(timeout=60_000)
    expect(page.locator("#gen-gallery img")).to_have_count(2, timeout=180_000)
    expect(page.locator("#gen-seed")).to_contain_text("Used seed")
    expect(page.locator("#gen-scores")).to_contain_text("Person 2")
    _shot(page, shots, "generate")
    page.locator("#gen-pool").click()
    expect(page.locator("#gen-status")).to_contain_text("added to the annotation pool", timeout=30_000)

    # --- annotator: keyboard vote with per-person labels, undo, vote again
    page = browser.new_context(viewport={"width": 1280, "height": 1600}).new_page()
    sign_in(page, url, "anna")
    page.get_by_role("tab", name="Annotate").click()
    expect(page.locator("#annotate-left img")).to_be_visible(timeout=30_000)
    expect(page.locator("#annotate-progress")).to_contain_text("0 vote(s) by you")
    page.locator("#annotate-prompt").click()
    keys = ["1", "a", "y", "b", "r", "t", "a", "c"]
    if page.locator("#annotate-identity-1").is_visible():
        keys[2:2] = ["2", "b"]
    for key in keys:
        page.keyboard.press(key)
    expect(page.locator("#annotate-overall input[value=left]")).to_be_checked()
    expect(page.locator("#annotate-identity-0 input[value=left]")).to_be_checked()
    _shot(page, shots, "annotate")
    page.keyboard.press("Enter")
    expect(page.locator("#annotate-progress")).to_contain_text("1 vote(s) by you", timeout=30_000)
    page.locator("#annotate-prompt").click()
    page.keyboard.press("u")
    expect(page.locator("#annotate-progress")).to_contain_text("Last vote undone", timeout=30_000)
    expect(page.locator("#annotate-progress")).to_contain_text("0 vote(s) by you")
    for key in ["b", "s", "1", "t"]:
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    expect(page.locator("#annotate-progress")).to_contain_text("1 vote(s) by you", timeout=30_000)

    from sqlalchemy import select

    from db.engine import make_engine, make_session_factory
    from db.models import User, Vote

    engine = make_engine(f"sqlite:///{data / 'idglow.db'}")
    with make_session_factory(engine)() as session:
        votes = session.scalars(select(Vote).join(User, User.id == Vote.user_id).where(User.username == "anna")).all()
        assert len(votes) == 1
        assert votes[0].answers["strength"] == "slight" and votes[0].answers["identity"]["0"] == "tie"
    engine.dispose()

    # --- researcher: leaderboard and a Parquet export that loads
    page = browser.new_context(viewport={"width": 1280, "height": 1800}, accept_downloads=True).new_page()
    sign_in(page, url, "rita")
    page.get_by_role("tab", name="Research").click()
    expect(page.locator("#research-leaderboard")).to_contain_text("demo-dpo", timeout=60_000)
    expect(page.locator("#research-plot")).to_be_visible()
    page.locator("#export-run").click()
    link = page.locator("#export-files a[download$='.parquet']").first
    link.wait_for(timeout=60_000)
    _shot(page, shots, "research")
    with page.expect_download() as info:
        link.click()
    target = tmp_path / "export.parquet"
    info.value.save_as(target)
    import pyarrow.parquet as pq

    table = pq.read_table(target)
    assert table.num_rows > 0 and {"jpg_0", "jpg_1", "label_0", "caption"} <= set(table.column_names)
