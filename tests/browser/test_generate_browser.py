"""The Generate tab in Debian's chromium (Playwright) on `python app.py`: consent in either order, a mixed batch,
one target age in the age task, the example family and the first screen at 1366×768 and 390×844.

Screenshots are saved under $IDGLOW_SCREENSHOT_DIR (default: a temporary folder) and printed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.conftest import serve_app

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("generate-data")
    with serve_app(data, "--max-upload-mb", "2") as url:
        yield url, data


def _page(browser, url: str, viewport: dict):
    page = browser.new_context(viewport=viewport).new_page()
    page.goto(url)
    page.locator("#gen-run").wait_for(timeout=60_000)
    return page


def _shot(page, folder: Path, name: str, full_page: bool = False) -> None:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    print(f"screenshot: {path}")


def _cards(page):
    return page.locator(".gen-card:visible")


def test_consent_ticked_before_or_after_choosing_photos(server, browser, sample_portraits):
    from playwright.sync_api import expect

    url, _ = server
    files = [str(sample_portraits["person1"]), str(sample_portraits["person2"])]
    # after: the photos wait, nothing is processed, then ticking the box processes them
    page = _page(browser, url, DESKTOP)
    page.locator("#gen-files input[type=file]").set_input_files(files)
    expect(page.locator("#gen-photo-status")).to_contain_text("Tick the consent box to process 2 photo(s)",
                                                              timeout=60_000)
    expect(_cards(page)).to_have_count(0)
    page.locator("#gen-consent input[type=checkbox]").check()
    expect(_cards(page)).to_have_count(2, timeout=60_000)
    expect(page.locator("#gen-photo-status")).to_contain_text("2 people ready")
    # before: the usual order
    page = _page(browser, url, DESKTOP)
    page.locator("#gen-consent input[type=checkbox]").check()
    page.locator("#gen-files input[type=file]").set_input_files(files)
    expect(_cards(page)).to_have_count(2, timeout=60_000)


def test_mixed_batch_keeps_good_faces_and_names_each_bad_file(server, browser, sample_portraits, tmp_path):
    from PIL import Image
    from playwright.sync_api import expect

    url, _ = server
    landscape = tmp_path / "landscape.png"
    Image.linear_gradient("L").resize((320, 200)).convert("RGB").save(landscape)
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(b"\xff\xd8\xff" + b"\0" * (3 * 2**20))
    page = _page(browser, url, DESKTOP)
    page.locator("#gen-consent input[type=checkbox]").check()
    page.locator("#gen-files input[type=file]").set_input_files(
        [str(sample_portraits["person1"]), str(landscape), str(huge), str(sample_portraits["person3"])])
    status = page.locator("#gen-photo-status")
    expect(status).to_contain_text("2 people ready", timeout=60_000)
    expect(status).to_contain_text("landscape.png: no face found")
    expect(status).to_contain_text("huge.jpg: file is 3.0 MB, over the 2 MB limit")
    expect(page.get_by_text("exceed the maximum allowed size")).to_have_count(0)
    expect(_cards(page)).to_have_count(2)
    page.locator("#gen-label-0 input").fill("Rachel")
    for name in ("landscape.png", "huge.jpg"):
        page.locator(f'#gen-files tr.file:has(td[aria-label="{name}"]) button[aria-label="Remove this file"]').click()
        expect(status).not_to_contain_text(name, timeout=30_000)
    expect(_cards(page)).to_have_count(2)
    expect(page.locator("#gen-label-0 input")).to_have_value("Rachel")


def test_age_task_needs_one_target_age_and_the_example_family_generates(server, browser, shots):
    from playwright.sync_api import expect

    url, data = server
    page = _page(browser, url, DESKTOP)
    page.locator("#gen-example").click()
    expect(_cards(page)).to_have_count(3, timeout=90_000)
    expect(page.locator("#gen-scene input")).to_have_value("a family picnic in a sunny park")
    page.get_by_text("Change ages").click()
    page.locator("#gen-run").click()
    expect(page.get_by_text("needs a target age for at least one person").first).to_be_visible(timeout=60_000)
    page.locator("#gen-age-1 input").fill("70")
    page.locator("#gen-age-1 input").press("Tab")
    page.locator("#gen-run").click()
    expect(page.locator("#gen-gallery img").first).to_be_visible(timeout=180_000)
    expect(page.locator("#gen-scores")).to_contain_text("face not found")
    expect(page.locator("#gen-pngs")).to_contain_text("idglow_")
    expect(page.locator("#gen-archive")).to_be_visible()
    _shot(page, shots, "generate-desktop-result")

    from sqlalchemy import select

    from db.engine import make_engine, make_session_factory
    from db.models import Generation, GenerationSubject

    engine = make_engine(f"sqlite:///{data / 'idglow.db'}")
    with make_session_factory(engine)() as session:
        gen = session.scalars(select(Generation).order_by(Generation.id.desc())).first()
        ages = session.scalars(select(GenerationSubject.target_age).where(GenerationSubject.generation_id == gen.id)
                               .order_by(GenerationSubject.slot)).all()
    engine.dispose()
    assert gen.task.value == "age" and ages == [None, 70.0, None]
    assert list((data / "downloads").glob(f"{gen.visitor_id}/idglow_*.png"))


def _bottom(page, selector: str) -> float:
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not on the page"
    return box["y"] + box["height"]


def test_first_screen_on_desktop_and_phone(server, browser, shots):
    from playwright.sync_api import expect

    url, _ = server
    page = _page(browser, url, DESKTOP)
    expect(page.locator("#idglow-banner")).to_have_text(
        "Demo model: images are abstract — see README to serve real weights")
    expect(page.locator("#gen-research")).to_contain_text("Research settings")
    expect(page.get_by_label("Global ID weight")).to_be_hidden()
    _shot(page, shots, "generate-desktop-empty")
    page.locator("#gen-example").click()
    expect(_cards(page)).to_have_count(3, timeout=90_000)
    page.wait_for_timeout(1000)
    for selector in ("#gen-files", "#gen-card-0", "#gen-card-2", "#gen-run"):
        assert _bottom(page, selector) <= DESKTOP["height"], f"{selector} is below the first screen at 1366×768"
    inputs, result = page.locator("#gen-inputs").bounding_box(), page.locator("#gen-gallery").bounding_box()
    assert result["x"] >= inputs["x"] + inputs["width"] - 1 and result["y"] < 300, "the result sits beside the inputs"
    _shot(page, shots, "generate-desktop-example")

    page = _page(browser, url, PHONE)
    _shot(page, shots, "generate-phone-first-screen")
    banner = page.locator("#idglow-banner").bounding_box()
    assert banner["height"] < 40, f"the banner takes {banner['height']} px; it must be one line on a phone"
    assert _bottom(page, "#gen-files") <= PHONE["height"], "the upload is on a phone's first screen"
    page.locator("#gen-example").click()
    expect(_cards(page)).to_have_count(3, timeout=90_000)
    files, run, gallery = (page.locator(s).bounding_box() for s in ("#gen-files", "#gen-run", "#gen-gallery"))
    assert files["y"] < run["y"] < gallery["y"] and abs(files["x"] - gallery["x"]) < 2, "one column, upload first"
    page.locator("#gen-run").click()
    expect(page.locator("#gen-gallery img").first).to_be_visible(timeout=180_000)
    table = page.locator("#gen-scores").bounding_box()
    assert table["x"] >= 0 and table["x"] + table["width"] <= PHONE["width"], "the score table fits 390 px"
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= PHONE["width"], f"the page scrolls sideways ({scroll} px)"
    _shot(page, shots, "generate-phone-example")
    _shot(page, shots, "generate-phone-result", full_page=True)


def test_research_settings_choose_the_linear_strength_profile(server, browser, shots):
    """A researcher opens "Research settings", narrows the σ window and picks linear decay: the generation
    stored in the database ran with that window and profile. The section is walked at both sizes."""
    from playwright.sync_api import expect

    url, data = server
    for viewport, name in ((PHONE, "phone"), (DESKTOP, "desktop")):
        page = _page(browser, url, viewport)
        page.locator("#gen-research").get_by_text("Research settings").click()
        profile = page.locator("#gen-profile")
        expect(profile).to_contain_text("Identity strength inside the window")
        expect(profile.locator("input[value=flat]")).to_be_checked()
        profile.get_by_text("Linear decay").click()
        expect(profile.locator("input[value=linear]")).to_be_checked()
        profile.scroll_into_view_if_needed()
        _shot(page, shots, f"generate-{name}-research")
    page.locator("#gen-example").click()
    expect(_cards(page)).to_have_count(3, timeout=90_000)
    page.locator("#gen-research input[type=number]").nth(1).fill("0.2")  # σ window: from
    page.locator("#gen-research input[type=number]").nth(1).press("Tab")
    page.locator("#gen-run").click()
    expect(page.locator("#gen-gallery img").first).to_be_visible(timeout=180_000)

    from sqlalchemy import select

    from db.engine import make_engine, make_session_factory
    from db.models import Generation

    engine = make_engine(f"sqlite:///{data / 'idglow.db'}")
    with make_session_factory(engine)() as session:
        gen = session.scalars(select(Generation).order_by(Generation.id.desc())).first()
    engine.dispose()
    assert gen.params["id_profile"] == "linear" and gen.params["id_window"][:2] == [0.2, 1.0]


_CONTRAST_JS = """(el) => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).slice(0, 4).map(Number);
  const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
                              return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  let bg = el, back = [255, 255, 255];
  while (bg) { const c = rgb(getComputedStyle(bg).backgroundColor); if (c.length === 3 || (c.length === 4 && c[3] > 0.9)) { back = c; break; } bg = bg.parentElement; }
  const fore = rgb(getComputedStyle(el).color);
  const [a, b] = [lum(fore), lum(back)].sort((x, y) => y - x);
  return (a + 0.05) / (b + 0.05);
}"""


def _stored_people(data: Path) -> list[tuple]:
    from sqlalchemy import select

    from db.engine import make_engine, make_session_factory
    from db.models import Generation, GenerationSubject

    engine = make_engine(f"sqlite:///{data / 'idglow.db'}")
    try:
        with make_session_factory(engine)() as session:
            gen = session.scalars(select(Generation).order_by(Generation.id.desc())).first()
            rows = session.execute(select(GenerationSubject.label, GenerationSubject.describe_as)
                                   .where(GenerationSubject.generation_id == gen.id)
                                   .order_by(GenerationSubject.slot)).all()
            return [tuple(r) for r in rows], gen.final_prompt, gen.params
    finally:
        engine.dispose()


def _no_card_violations(page, size: str) -> None:
    """axe-core (WCAG 2 A/AA) on the person cards, when axe-core is installed; the crop's unnamed button is
    Gradio's own markup (a non-interactive gr.Image)."""
    import os

    root = Path(__file__).resolve().parents[2]
    found = [p for p in (os.environ.get("IDGLOW_AXE_JS"), root / "node_modules" / "axe-core" / "axe.min.js")
             if p and Path(p).is_file()]
    if not found:
        return
    page.add_script_tag(content=Path(found[0]).read_text())
    violations = page.evaluate("""async () => (await axe.run(document.querySelector('#gen-cards'),
        {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa']}})).violations.flatMap(
        v => v.nodes.map(n => [v.id, n.html.slice(0, 200),
                               !!document.querySelector(n.target[0])?.closest('.gen-card-crop')]))""")
    problems = [(rule, node) for rule, node, crop in violations if not (rule == "button-name" and crop)]
    assert not problems, f"person cards at {size} size: {problems}"


def test_person_card_labels_describe_as_and_the_age_hint(server, browser, shots):
    """Each card's fields carry visible labels (AA contrast) that stay while typing; "Describe as" reaches the
    written prompt and the stored person; a target age typed under the group-photo task gets an inline hint."""
    from playwright.sync_api import expect

    url, data = server
    for viewport, name in ((PHONE, "phone"), (DESKTOP, "desktop")):
        page = _page(browser, url, viewport)
        page.locator("#gen-example").click()
        expect(_cards(page)).to_have_count(3, timeout=90_000)
        card = page.locator("#gen-card-0")
        for label in ("Name", "Describe as", "Target age"):
            text = card.get_by_text(label, exact=True)
            expect(text).to_be_visible()
            ratio = text.evaluate(_CONTRAST_JS)
            assert ratio >= 4.5, f"'{label}' on the card is {ratio:.1f}:1 at {name} size; WCAG AA needs 4.5:1"
        _no_card_violations(page, name)
        page.locator("#gen-label-0 input").fill("Grandma")
        expect(card.get_by_text("Name", exact=True)).to_be_visible()  # the label stays while typing
        page.locator("#gen-describe-0 input").click()
        page.locator("#gen-describe-0").get_by_role("option", name="Woman").click()
        page.locator("#gen-describe-2 input").click()
        page.locator("#gen-describe-2").get_by_role("option", name="Boy").click()
        expect(page.locator("#gen-describe-2 input")).to_have_value("Boy")
        page.locator("#gen-age-1 input").fill("70")
        page.locator("#gen-age-1 input").press("Tab")
        expect(page.locator("#gen-run-note")).to_contain_text("'Change ages' is the task", timeout=30_000)
        card.scroll_into_view_if_needed()
        _shot(page, shots, f"generate-{name}-person-cards")
    page.locator("#gen-age-1 input").fill("")
    page.locator("#gen-age-1 input").press("Tab")
    page.locator("#gen-run").click()
    expect(page.locator("#gen-gallery img").first).to_be_visible(timeout=180_000)
    people, prompt, params = _stored_people(data)
    assert people == [("Grandma", "woman"), (None, None), (None, "boy")]
    assert "(Grandma) is a woman" in prompt and "boy" in prompt.split("The third person from the left")[1]
    assert "labels" not in params and "target_ages" not in params  # each person stored once, on their row
