"""A researcher's export in a real browser: the maker's browser downloads it, other browsers get 404."""

from __future__ import annotations

import pytest

from tests.browser.conftest import PASSWORD, serve_app, sign_in

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from store_fixtures import make_store

    from annotation.store.users import create_user

    data = tmp_path_factory.mktemp("export-browser-data")
    store = make_store(data)
    with store.sessions() as session:
        create_user(session, "rita", PASSWORD, "researcher")
        create_user(session, "remy", PASSWORD, "researcher")
    store.engine.dispose()
    with serve_app(data) as url:
        yield url


def _signed_in_page(browser, url: str, user: str):
    context = browser.new_context(viewport={"width": 1366, "height": 768}, accept_downloads=True)
    page = context.new_page()
    sign_in(page, url, user)
    return context, page


def test_only_the_makers_browser_downloads_the_export(server, browser, tmp_path):
    url = server
    rita, page = _signed_in_page(browser, url, "rita")
    page.get_by_role("tab", name="Research").click()
    page.locator("#export-run").click()
    link = page.locator("#export-files a[download$='.zip']").first
    link.wait_for(timeout=60_000)
    href = link.get_attribute("href")
    assert "/file=" in href
    with page.expect_download() as info:
        link.click()
    info.value.save_as(tmp_path / "export.zip")
    assert (tmp_path / "export.zip").stat().st_size > 0
    assert rita.request.get(href).status == 200

    remy, _ = _signed_in_page(browser, url, "remy")
    anonymous = browser.new_context()
    assert remy.request.get(href).status == 404, "another researcher's browser"
    assert anonymous.request.get(href).status == 404, "a browser that never signed in"
    page.locator("#signin-out").click()
    page.get_by_text("Sign in (annotators and researchers)").wait_for(timeout=30_000)
    assert rita.request.get(href).status == 404, "the maker's browser after signing out"
    for context in (rita, remy, anonymous):
        context.close()
