"""The Generate tab's upload box, file list, links and touch targets in Debian's chromium (Playwright) against
`python app.py`, at 1366×768 and 390×844: the box's label covers neither the upload icon nor the box's buttons,
every chosen file (the rejected ones too) is in view with its ×, no link on the tab answers 404 (an upload as
received is never served back, so its row offers no download), "Used seed" never shows the previous run's seed
while a run runs, every control on a phone is a 44 px touch target, and the texts checked reach WCAG AA contrast.

Screenshots go to $IDGLOW_SCREENSHOT_DIR (default: a temporary folder) and are printed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.browser.conftest import serve_app

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}
TOUCH = 44  # px, the touch target on a phone
AA = 4.5  # WCAG AA contrast for body text

# Every control a finger can hit, as the page shows it: its box, and what it is for the report.
CONTROLS_JS = """(root) => {
  const sel = 'button, a[href], input:not([type=hidden]):not([type=radio]):not([type=checkbox]), textarea, select, '
            + 'label:has(input[type=radio]), label:has(input[type=checkbox]), summary';
  return [...root.querySelectorAll(sel)].filter(el => {
    const r = el.getBoundingClientRect(), s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && !el.closest('.prose p, .prose li');
  }).map(el => {
    const r = el.getBoundingClientRect();
    return {what: `${el.tagName} ${(el.getAttribute('aria-label') || el.innerText || el.value || '').trim().slice(0, 40)}`,
            w: r.width, h: r.height};
  });
}"""

# WCAG's contrast ratio of an element's text colour against the first opaque background behind it.
CONTRAST_JS = """(el) => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
                                     .reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
  let bg = null;
  for (let e = el; e && !bg; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor);
    if (c.length === 3 || (c.length === 4 && c[3] === 1)) bg = c.slice(0, 3);
  }
  const [a, b] = [lum(rgb(getComputedStyle(el).color).slice(0, 3)), lum(bg || [255, 255, 255])];
  return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("upload-layout-data")
    with serve_app(data, "--max-upload-mb", "2") as url:
        yield url, data


@pytest.fixture(scope="module")
def batch(sample_portraits, tmp_path_factory) -> list[str]:
    """Five photos, two of which the app rejects: one without a face and one over the 2 MB limit."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("batch")
    landscape = folder / "landscape-without-anyone.png"
    Image.linear_gradient("L").resize((320, 200)).convert("RGB").save(landscape)
    huge = folder / "huge.jpg"
    huge.write_bytes(b"\xff\xd8\xff" + b"\0" * (3 * 2**20))
    return [str(sample_portraits["person1"]), str(landscape), str(huge), str(sample_portraits["person3"]),
            str(sample_portraits["person2"])]


def _page(browser, url: str, viewport: dict):
    page = browser.new_context(viewport=viewport).new_page()
    page.goto(url)
    page.locator("#gen-run").wait_for(timeout=60_000)
    return page


def _shot(page, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")


def _overlap(a: dict, b: dict) -> float:
    """The area two bounding boxes share, in px²."""
    w = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
    h = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
    return max(w, 0) * max(h, 0)


def _label(page) -> dict:
    return page.locator('#gen-files > label[data-testid="block-label"]').bounding_box()


def _on_top(page, selector: str) -> bool:
    """Whether the centre of the element is what a click there hits (nothing covers it, nothing clips it)."""
    return page.locator(selector).evaluate("""(el) => {
        el.scrollIntoView({block: 'center'});
        const r = el.getBoundingClientRect();
        const hit = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
        return hit !== null && (hit === el || el.contains(hit));
    }""")


def _choose_batch(page, files: list[str]) -> None:
    from playwright.sync_api import expect

    page.locator("#gen-consent input[type=checkbox]").check()
    page.locator("#gen-files input[type=file]").set_input_files(files)
    status = page.locator("#gen-photo-status")
    expect(status).to_contain_text("3 people ready", timeout=90_000)
    expect(status).to_contain_text("landscape-without-anyone.png: no face found")
    expect(status).to_contain_text("huge.jpg: file is 3.0 MB")


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_upload_label_leaves_the_icon_and_buttons_free_and_every_file_is_in_view(server, browser, batch, shots,
                                                                                  viewport):
    url, _ = server
    size = f"{viewport['width']}x{viewport['height']}"
    page = _page(browser, url, viewport)
    icon = page.locator('#gen-files [data-testid="upload-icon"]').bounding_box()
    assert icon and _overlap(_label(page), icon) == 0, "the upload box's label covers the upload icon"
    _shot(page, shots, f"upload-empty-{size}")
    _choose_batch(page, batch)
    for button in page.locator("#gen-files .icon-button").all():
        assert _overlap(_label(page), button.bounding_box()) == 0, "the label runs under the box's buttons"
    rows = page.locator("#gen-files tr.file")
    assert rows.count() == len(batch)
    for name in (Path(f).name for f in batch):
        row = f'#gen-files tr.file:has(td[aria-label="{name}"])'
        assert _on_top(page, f'{row} td.filename'), f"{name} is hidden in the file list"
        assert _on_top(page, f'{row} button[aria-label="Remove this file"]'), f"the × of {name} cannot be reached"
    assert page.locator("#gen-files a:visible").count() == 0, "an upload's row offers a download"
    page.locator("#gen-files").scroll_into_view_if_needed()
    _shot(page, shots, f"upload-files-{size}")


def _link_statuses(page, selector: str) -> dict[str, int]:
    """The HTTP status of every visible link under ``selector``, fetched with the page's cookies."""
    hrefs = page.locator(f"{selector} a[href]:visible").evaluate_all("els => els.map(a => a.href)")
    return {href: page.request.get(href).status for href in hrefs if href.startswith("http")}


def _run(page, press: bool = True) -> str:
    """Press Generate (unless pressed already) and wait for the run's end; returns the "Used seed" line."""
    from playwright.sync_api import expect

    if press:
        page.locator("#gen-run").click()
    expect(page.locator("#gen-seed")).to_contain_text(re.compile(r"\d{3,}"), timeout=180_000)
    expect(page.locator("#gen-pngs a[href]").first).to_be_attached(timeout=60_000)
    return page.locator("#gen-seed").inner_text()


def test_no_link_answers_404_and_the_seed_is_never_the_previous_one(server, browser, batch, shots):
    url, _ = server
    page = _page(browser, url, DESKTOP)
    _choose_batch(page, batch)
    raw = page.locator("#gen-files a[href]").evaluate_all("els => els.map(a => a.href)")
    assert raw and all(page.request.get(h).status == 404 for h in raw), "an upload as received is served back"
    first = re.search(r"\d+", _run(page)).group()
    statuses = _link_statuses(page, "#gen-tab")
    pngs = _link_statuses(page, "#gen-pngs")
    assert len(pngs) == 2 and set(statuses.values()) == {200}, statuses
    page.locator("#gen-run").click()
    page.wait_for_timeout(150)  # Gradio's queue answers after this: the line is the page's own
    during = page.locator("#gen-seed").inner_text()
    assert first not in during, f"while the second run runs the page shows the first run's seed: {during!r}"
    assert re.search(r"\d+", _run(page, press=False)).group() != first
    _shot(page, shots, "upload-desktop-after-two-runs")


def test_every_control_on_a_phone_is_a_touch_target_with_aa_contrast(server, browser, batch, shots):
    from playwright.sync_api import expect

    url, _ = server
    page = _page(browser, url, PHONE)
    banner = page.locator("#idglow-banner p")
    assert banner.evaluate("p => p.scrollWidth <= p.clientWidth && getComputedStyle(p).textOverflow !== 'ellipsis'"), \
        "the demo banner is cut on a phone"
    _choose_batch(page, batch)
    page.locator("#gen-files").screenshot(path=str(shots / "upload-phone-file-list.png"))
    ratio = page.locator('#gen-files button[aria-label="Remove this file"]').first.evaluate(CONTRAST_JS)
    assert ratio >= AA, f"a file's ×: contrast {ratio:.2f}:1 is under {AA}:1"
    page.locator("#gen-example").click()
    expect(page.locator(".gen-card:visible")).to_have_count(3, timeout=90_000)
    _run(page)
    small = [c for c in page.locator("#gen-tab").evaluate(CONTROLS_JS) if c["w"] < TOUCH or c["h"] < TOUCH]
    assert not small, f"controls smaller than {TOUCH}×{TOUCH} px at 390×844: {small}"
    for selector in ("#gen-delete", "#gen-tab-button", '#gen-files > label[data-testid="block-label"]',
                     "#idglow-banner p", "#gen-seed"):
        ratio = page.locator(selector).evaluate(CONTRAST_JS)
        assert ratio >= AA, f"{selector}: contrast {ratio:.2f}:1 is under {AA}:1"
    page.screenshot(path=str(shots / "upload-phone-result-full.png"), full_page=True)
