"""The Research tab in Debian's chromium: a researcher signs in, reads the leaderboard and the guides,
exports, and sees what the export holds and the command that trains on the download.

Screenshots at 1366×768 and 390×844 go to $IDGLOW_SCREENSHOT_DIR (default: a temporary folder)."""

from __future__ import annotations

import pytest

from tests.browser.conftest import PASSWORD, serve_app, sign_in

pytestmark = pytest.mark.browser
VIEWPORTS = {"laptop": (1366, 768), "phone": (390, 844)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from store_fixtures import make_store

    from annotation.store.demo import pattern_images, seed_demo_data
    from annotation.store.users import create_user

    data = tmp_path_factory.mktemp("research-data")
    store = make_store(data)
    with store.sessions() as session:
        seed_demo_data(session, data, candidates=24, votes=80, annotators=3, images=pattern_images(8), gold_rate=0.05)
        create_user(session, "rita", PASSWORD, "researcher")
    store.engine.dispose()
    with serve_app(data) as url:
        yield url, store


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_researcher_exports_and_reads_the_summary(server, browser, shots, viewport):
    from playwright.sync_api import expect
    from sqlalchemy import func, select

    from db.models import Comparison, Vote

    url, store = server
    width, height = VIEWPORTS[viewport]
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    sign_in(page, url, "rita")
    page.get_by_role("tab", name="Research").click()
    expect(page.locator("#research-leaderboard")).to_contain_text("demo-dpo", timeout=60_000)
    expect(page.locator("#research-leaderboard")).to_contain_text("win rate")
    expect(page.locator("#research-leaderboard-notes")).to_contain_text("How to read it")
    expect(page.locator("#research-leaderboard-notes")).to_contain_text("Last vote counted")
    expect(page.locator("#research-agreement-notes")).to_contain_text("How to read α")
    expect(page.locator("#research-annotator-notes")).to_contain_text("gold votes: too few")
    page.locator("#research-counts").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / f"research-{viewport}-top.png"))

    page.locator("#export-min-votes input").fill("3")
    page.locator("#export-run").click()
    status = page.locator("#export-status")
    expect(status).to_contain_text("Exported", timeout=60_000)
    with store.sessions() as s:  # the numbers on screen are the store's
        total = s.scalar(select(func.count()).select_from(Vote))
        gold = s.scalar(select(func.count()).select_from(Comparison).where(Comparison.is_gold.is_(True),
                                                                         Comparison.vote_count > 0))
    text = status.inner_text()
    assert f"the store holds {total} votes in all" in text
    assert f"{gold} comparison(s), gold item" in text
    assert "fewer than 3 vote(s)" in text and "Ties:" in text and "Both bad:" in text
    assert "unzip export-" in text and "--set train_data=export-" in text
    assert str(store.data_dir) not in text  # no server path in the command
    status.get_by_text("Dataset card (README.md in the zip)").click()
    expect(status).to_contain_text("IdGlow group preferences")
    expect(page.locator("#export-files a[download$='.zip']").first).to_be_attached(timeout=30_000)
    status.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / f"research-{viewport}-export.png"))
    page.screenshot(path=str(shots / f"research-{viewport}-full.png"), full_page=True)
    page.context.close()
