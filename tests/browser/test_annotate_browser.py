"""The Annotate tab in Debian's chromium (Playwright) against `python app.py`: every pair starts with an empty
form, signing in shows a pair, flag and undo by keyboard, untrusted text shown as text, the first screen, and
the wrong-age flag suggested by apparent ages.

Every stored answer is checked in the SQLite database. Screenshots go to $IDGLOW_SCREENSHOT_DIR (default: a
temporary folder).
"""

from __future__ import annotations

import http.server
import re
import threading
from pathlib import Path

import pytest

from tests.browser.conftest import PASSWORD, serve_app, sign_in, stored_votes

pytestmark = pytest.mark.browser

ANNOTATORS = ("ann1", "ann2", "ann3", "ann4", "ann5", "ann6", "ann7", "ann8", "ann9")
CHOICE_IDS = ["annotate-overall", "annotate-strength", "annotate-texture", "annotate-artifacts", "flag-side",
              "flag-types", *[f"annotate-identity-{i}" for i in range(6)]]


class _Listener(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 - the http.server name
        self.hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def listener():
    """A local HTTP server that records every request: untrusted text must never make the page fetch it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Listener)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Listener.hits
    server.shutdown()


def _poison_open_pair(data: Path, user: str, host: str) -> None:
    """The prompt and labels of the pair served to ``user`` get a Markdown image and an <img> tag pointing at
    the listener; the prompt gets long as well."""
    from sqlalchemy import select, update

    from db.engine import make_engine, make_session_factory
    from db.models import (
        Assignment,
        AssignmentStatus,
        Candidate,
        Comparison,
        Generation,
        GenerationSubject,
        User,
    )

    tags = f" ![x]({host}/md.png) <img src={host}/tag.png>"
    long = ", standing together in a sunlit park with autumn trees behind them" * 4
    engine = make_engine(f"sqlite:///{data / 'idglow.db'}")
    try:
        with make_session_factory(engine)() as session:
            generation_id = session.scalar(
                select(Candidate.generation_id).join(Comparison, Comparison.candidate_a_id == Candidate.id)
                .join(Assignment, Assignment.comparison_id == Comparison.id).join(User, User.id == Assignment.user_id)
                .where(User.username == user, Assignment.status == AssignmentStatus.open))
            session.execute(update(Generation).where(Generation.id == generation_id)
                            .values(final_prompt=Generation.final_prompt + long + tags))
            session.execute(update(GenerationSubject).where(GenerationSubject.generation_id == generation_id)
                            .values(label=GenerationSubject.label + tags))
            session.commit()
    finally:
        engine.dispose()


def _age_task_for_groups_of_three(session) -> None:
    """Groups of three become age tasks with target ages for persons 1 and 3 (the layout test looks for one)."""
    from sqlalchemy import select, update

    from db.models import Generation, GenerationSubject

    ids = session.scalars(select(Generation.id).where(Generation.num_subjects == 3)).all()
    assert ids, "the demo data has no group of three people; pick another seed"
    session.execute(update(Generation).where(Generation.id.in_(ids)).values(task="age"))
    for slot, age in [(0, 30.0), (2, 70.0)]:
        session.execute(update(GenerationSubject).where(GenerationSubject.generation_id.in_(ids),
                                                        GenerationSubject.slot == slot).values(target_age=age))
    session.commit()


def _demo_store(folder, candidates: int, images: int, annotators, then=None):
    """A demo store in ``folder`` (seed 5: groups of one and of three people, no votes, no gold items) with
    these annotators (password PASSWORD); ``then(session)`` runs in the same session."""
    from store_fixtures import make_store

    from annotation.store.demo import pattern_images, seed_demo_data
    from annotation.store.users import create_user

    store = make_store(folder)
    with store.sessions() as session:
        seed_demo_data(session, folder, candidates=candidates, votes=0, annotators=1, images=pattern_images(images),
                       gold_rate=0.0, seed=5)
        for name in annotators:
            create_user(session, name, PASSWORD, "annotator")
        if then is not None:
            then(session)
    store.engine.dispose()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("annotate-data")
    _demo_store(data, 32, 8, ANNOTATORS, then=_age_task_for_groups_of_three)
    with serve_app(data) as url:
        yield url, data


def _page(browser, width: int = 1366, height: int = 768):
    return browser.new_context(viewport={"width": width, "height": height}).new_page()


def _open_pair(page, url: str, user: str) -> None:
    from playwright.sync_api import expect

    sign_in(page, url, user)
    page.get_by_role("tab", name="Annotate").click()
    expect(page.locator("#annotate-left img")).to_be_visible(timeout=30_000)


def _checked(page) -> dict[str, list[str]]:
    """elem_id → values of its checked inputs, for every choice of the Annotate tab that has one checked."""
    found = {}
    for elem in CHOICE_IDS:
        values = page.locator(f"#{elem} input:checked").evaluate_all("els => els.map(e => e.value)")
        if values:
            found[elem] = values
    return found


def _focus_pair(page) -> None:
    page.locator("#annotate-progress").click()


def _identity_keys(page, sides: str = "abt") -> list[str]:
    keys = []
    for i in range(6):
        if page.locator(f"#annotate-identity-{i}").is_visible():
            keys += [str(i + 1), sides[i % len(sides)]]
    return keys


def test_every_pair_starts_with_an_empty_form(server, browser):
    """Answers given on one pair are neither shown nor stored on the next one."""
    url, data = server
    from playwright.sync_api import expect

    page = _page(browser)
    _open_pair(page, url, "ann1")
    page.locator("#flag-side input[value=left]").check()
    page.locator("#flag-types input[type=checkbox]").first.check()
    page.locator("#flag-note textarea, #flag-note input").first.fill("looks odd")
    _focus_pair(page)
    for key in ["a", "c", *_identity_keys(page), "y", "b", "r", "t"]:
        page.keyboard.press(key)
    before = _checked(page)
    assert {"annotate-overall", "annotate-strength", "annotate-texture", "annotate-artifacts",
            "annotate-identity-0", "flag-side", "flag-types"} <= set(before), before
    page.keyboard.press("Enter")
    expect(page.locator("#annotate-progress")).to_contain_text("1 vote(s) by you", timeout=30_000)
    page.wait_for_timeout(500)
    assert _checked(page) == {}
    assert page.locator("#flag-note textarea, #flag-note input").first.input_value() == ""

    _focus_pair(page)
    page.keyboard.press("b")
    page.keyboard.press("Enter")
    expect(page.locator("#annotate-progress")).to_contain_text("2 vote(s) by you", timeout=30_000)
    first, second = stored_votes(data, "ann1")
    assert first.strength is not None and first.texture is not None and first.identity
    assert second.overall in ("a", "b")
    assert (second.strength, second.texture, second.artifacts, second.identity) == (None, None, None, None)


def _badcases(data: Path, user: str) -> list:
    from sqlalchemy import select

    from db.engine import make_engine, make_session_factory
    from db.models import Badcase, User

    engine = make_engine(f"sqlite:///{data / 'idglow.db'}")
    try:
        with make_session_factory(engine)() as session:
            return session.scalars(select(Badcase).join(User, User.id == Badcase.user_id)
                                   .where(User.username == user)).all()
    finally:
        engine.dispose()


def test_sign_in_on_the_annotate_tab_shows_a_pair_ready_for_keys(server, browser):
    """A newcomer opens Annotate, signs in with Enter: the panel collapses, the pair appears without error
    badges and the keys work without a click."""
    url, _ = server
    from playwright.sync_api import expect

    page = _page(browser)
    page.goto(url)
    page.get_by_role("tab", name="Annotate").click()
    expect(page.locator("#annotate-intro")).to_contain_text("sign in above")
    page.get_by_text("Sign in (annotators and researchers)").click()
    page.locator("#signin-user textarea, #signin-user input").first.fill("ann2")
    page.locator("#signin-password input").fill(PASSWORD)
    page.locator("#signin-password input").press("Enter")
    expect(page.locator("#annotate-left img")).to_be_visible(timeout=30_000)
    expect(page.locator("#signin-bar")).to_contain_text("Signed in as ann2")
    expect(page.locator("#signin-out")).to_be_visible()
    expect(page.locator("#signin-password input")).to_be_hidden()
    expect(page.locator("#annotate-intro")).to_be_hidden()
    expect(page.locator("#annotate-progress")).to_contain_text("0 vote(s) by you")
    expect(page.get_by_text("Error", exact=True)).to_have_count(0)
    page.wait_for_function("document.activeElement && document.activeElement.id === 'annotate-pair'",
                           timeout=10_000)
    page.keyboard.press("b")
    expect(page.locator("#annotate-overall input[value=right]")).to_be_checked()

    page.locator("#signin-out").click()
    expect(page.locator("#annotate-intro")).to_be_visible(timeout=30_000)
    expect(page.locator("#annotate-left")).to_be_hidden()


def test_sign_in_on_another_tab_then_open_annotate(server, browser):
    url, _ = server
    from playwright.sync_api import expect

    page = _page(browser)
    sign_in(page, url, "ann3")
    page.get_by_role("tab", name="Annotate").click()
    expect(page.locator("#annotate-left img")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Error", exact=True)).to_have_count(0)
    page.wait_for_function("document.activeElement && document.activeElement.id === 'annotate-pair'",
                           timeout=10_000)
    page.keyboard.press("a")
    expect(page.locator("#annotate-overall input[value=left]")).to_be_checked()


def test_flag_by_keyboard_stores_the_taxonomy_name(server, browser):
    url, data = server
    from playwright.sync_api import expect

    from annotation.store.votes import FAILURE_TYPES

    page = _page(browser)
    _open_pair(page, url, "ann4")
    _focus_pair(page)
    page.keyboard.press("f")  # opens the flag form
    expect(page.locator("#flag-types")).to_contain_text("Identity swap")
    expect(page.locator("#flag-types")).not_to_contain_text("identity_swap")
    swap = FAILURE_TYPES.index("identity_swap") + 1
    for key in ["b", str(swap), "Enter"]:
        page.keyboard.press(key)
    expect(page.locator("#flag-status")).to_contain_text("Flagged image B as Identity swap", timeout=30_000)
    assert _checked(page) == {}  # the flag form is cleared, and Enter did not submit a vote
    [badcase] = _badcases(data, "ann4")
    assert badcase.failure_types == ["identity_swap"]
    assert stored_votes(data, "ann4") == []
    page.keyboard.press("Escape")
    page.keyboard.press("a")
    page.keyboard.press("Enter")
    expect(page.locator("#annotate-progress")).to_contain_text("1 vote(s) by you", timeout=30_000)
    [vote] = stored_votes(data, "ann4")
    # image B is the candidate that is not on the left
    assert badcase.candidate_id != vote.shown_left_id


def test_undo_brings_back_the_answers_given(server, browser):
    url, data = server
    from playwright.sync_api import expect

    page = _page(browser)
    _open_pair(page, url, "ann5")
    _focus_pair(page)
    for key in ["b", "s", *_identity_keys(page, "ta"), "y", "a", "r", "b"]:
        page.keyboard.press(key)
    given = _checked(page)
    page.keyboard.press("Enter")
    expect(page.locator("#annotate-progress")).to_contain_text("1 vote(s) by you", timeout=30_000)
    [vote] = stored_votes(data, "ann5")
    assert vote.strength == "slight" and vote.texture is not None
    page.wait_for_timeout(300)
    assert _checked(page) == {}
    page.keyboard.press("u")
    expect(page.locator("#annotate-progress")).to_contain_text("Last vote undone", timeout=30_000)
    expect(page.locator("#annotate-overall input[value=right]")).to_be_checked()
    assert _checked(page) == given
    assert stored_votes(data, "ann5") == []
    page.keyboard.press("Enter")  # the restored answers can be submitted again as they are
    expect(page.locator("#annotate-progress")).to_contain_text("1 vote(s) by you", timeout=30_000)
    [again] = stored_votes(data, "ann5")
    assert (again.comparison_id, again.overall, again.strength, again.texture, again.artifacts, again.identity) == (
        vote.comparison_id, vote.overall, vote.strength, vote.texture, vote.artifacts, vote.identity)


def test_untrusted_prompt_and_labels_are_shown_as_text(server, browser, listener):
    url, _ = server
    host, hits = listener
    from playwright.sync_api import expect

    page = _page(browser)
    _open_pair(page, url, "ann6")
    _poison_open_pair(server[1], "ann6", host)
    _open_pair(page, url, "ann6")  # a new page load serves the same pair, now with the visitor's tags
    page.wait_for_timeout(1500)
    assert hits == []
    assert page.locator(f"img[src^='{host}']").count() == 0
    expect(page.locator("#annotate-prompt")).to_contain_text(f"![x]({host}/md.png)")
    expect(page.locator("#annotate-prompt")).to_contain_text(f"<img src={host}/tag.png>")
    expect(page.locator("#annotate-identity-0")).to_contain_text("<img src=")
    expect(page.locator("#annotate-refs")).to_contain_text("<img src=")
    assert hits == []
    # the long prompt takes one line above the candidates until it is clicked
    line = page.locator("#annotate-prompt summary")
    one_line = line.bounding_box()["height"]
    assert one_line < 30, one_line
    line.click()
    expect(page.locator("#annotate-prompt details")).to_have_attribute("open", "")
    assert line.bounding_box()["height"] > 1.5 * one_line


def _skip_to_a_group_with_target_ages(page, tries: int = 40) -> None:
    """Skip pairs until one of three people with target ages is shown."""
    for _ in range(tries):
        if page.locator("#annotate-identity-2").is_visible() and " · age " in page.locator("#annotate-refs").inner_text():
            return
        before = page.locator("#annotate-progress").inner_text()
        page.locator("#annotate-skip").click()
        page.wait_for_function("(before) => document.querySelector('#annotate-progress').innerText !== before",
                               arg=before, timeout=30_000)
        page.wait_for_timeout(300)
    raise AssertionError("no pair of three people with target ages was served")


def _wait_for_images(page) -> None:
    """Until every image of the pair and the references has loaded and the layout had two frames to settle."""
    page.wait_for_function(
        "() => { const imgs = [...document.querySelectorAll('#annotate-pair img')];"
        " return imgs.length >= 5 && imgs.every(i => i.complete && i.naturalWidth > 0); }", timeout=30_000)
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    page.wait_for_timeout(300)


def _box(page, selector: str) -> dict:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not rendered"
    return box


def test_first_screen_holds_both_candidates_the_vote_and_square_captioned_references(server, browser, shots):
    url, _ = server
    from playwright.sync_api import expect

    page = _page(browser, 1366, 768)
    _open_pair(page, url, "ann7")
    _skip_to_a_group_with_target_ages(page)
    page.evaluate("window.scrollTo(0, 0)")
    _wait_for_images(page)
    expect(page.get_by_text("sign in above")).to_be_hidden()
    left, right, overall = (_box(page, s) for s in ("#annotate-left img", "#annotate-right img", "#annotate-overall"))
    assert min(left["height"], right["height"]) >= 0.55 * 768, (left, right)
    assert left["y"] >= 0 and right["y"] >= 0
    assert overall["y"] >= left["y"] + left["height"] and overall["y"] + overall["height"] <= 768, (left, overall)
    refs = page.locator("#annotate-refs img").evaluate_all(
        "els => els.map(e => [e.clientWidth, e.clientHeight, getComputedStyle(e).objectFit])")
    assert len(refs) == 3 and all(w == h and w >= 60 and fit == "contain" for w, h, fit in refs), refs
    captions = page.locator("#annotate-refs .caption-label").all_inner_texts()
    assert len(captions) == 3 and all(c.startswith("person ") for c in captions), captions
    assert any(" · age " in c for c in captions), captions
    for i, caption in enumerate(captions):  # the caption sits below its thumbnail, not over the face
        image, label = page.locator("#annotate-refs img").nth(i).bounding_box(), \
            page.locator("#annotate-refs .caption-label").nth(i).bounding_box()
        assert label["y"] >= image["y"] + image["height"] - 1, (caption, image, label)
    page.screenshot(path=str(shots / "annotate-1366x768.png"))
    print(f"screenshot: {shots / 'annotate-1366x768.png'}")

    phone = _page(browser, 390, 844)
    _open_pair(phone, url, "ann7")  # the same open pair
    _wait_for_images(phone)
    a, b = _box(phone, "#annotate-left img"), _box(phone, "#annotate-right img")  # side by side, both in view
    assert abs(a["y"] - b["y"]) < 2 and a["x"] + a["width"] <= b["x"] + 1 and b["x"] + b["width"] <= 390, (a, b)
    assert min(a["width"], b["width"]) >= 0.38 * 390, (a, b)
    assert len(phone.locator("#annotate-refs img").all()) == 3
    phone.screenshot(path=str(shots / "annotate-390x844.png"), full_page=True)
    print(f"screenshot: {shots / 'annotate-390x844.png'}")


def _give_apparent_ages(data: Path, user: str, left: list, right: list) -> None:
    """The stored face matches of the pair open for ``user`` get apparent ages: ``left`` for the image on the
    left of that annotator's screen, ``right`` for the other."""
    from sqlalchemy import select

    from db.engine import make_engine, make_session_factory
    from db.models import Assignment, AssignmentStatus, Candidate, Comparison, User

    engine = make_engine(f"sqlite:///{data / 'idglow.db'}")
    try:
        with make_session_factory(engine)() as session:
            assignment = session.scalars(select(Assignment).join(User, User.id == Assignment.user_id)
                                         .where(User.username == user, Assignment.status == AssignmentStatus.open)
                                         ).one()
            comparison = session.get(Comparison, assignment.comparison_id)
            for cid in (comparison.candidate_a_id, comparison.candidate_b_id):
                candidate = session.get(Candidate, cid)
                ages = left if cid == assignment.shown_left_id else right
                candidate.face_matches = {**candidate.face_matches, "ages": ages}
            session.commit()
    finally:
        engine.dispose()


def test_apparent_age_far_from_the_target_suggests_the_wrong_age_flag(server, browser, shots):
    """Person 3 should look 70: looking 41 in the left image puts the suggestion above the flag form; the
    annotator follows it by keyboard and the flag is stored on that image."""
    url, data = server
    from playwright.sync_api import expect

    from annotation.store.votes import FAILURE_TYPES

    page = _page(browser, 1366, 768)
    _open_pair(page, url, "ann9")
    _skip_to_a_group_with_target_ages(page)
    expect(page.locator("#flag-hint")).to_be_hidden()
    _give_apparent_ages(data, "ann9", [33.0, 12.0, 41.0], [31.0, 50.0, 66.0])
    _open_pair(page, url, "ann9")  # the same open pair, now with apparent ages
    hint = page.locator("#flag-hint")
    # person 3's label may carry the untrusted text another test gave the same generation (shown as text)
    expect(hint).to_contain_text(re.compile(r"Face ages suggest Wrong age \[5\]: in A, person 3\b.* looks 41 "
                                            r"\(target 70\)\."))
    expect(hint).not_to_contain_text("in B")
    hint.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "annotate-hint-1366x768.png"))
    _focus_pair(page)
    for key in ["f", "a", str(FAILURE_TYPES.index("wrong_age") + 1), "Enter"]:
        page.keyboard.press(key)
    expect(page.locator("#flag-status")).to_contain_text("Flagged image A as Wrong age", timeout=30_000)
    [badcase] = _badcases(data, "ann9")
    assert badcase.failure_types == ["wrong_age"]
    from db.engine import make_engine, make_session_factory
    from db.models import Candidate

    engine = make_engine(f"sqlite:///{data / 'idglow.db'}")
    try:
        with make_session_factory(engine)() as session:
            assert session.get(Candidate, badcase.candidate_id).face_matches["ages"] == [33.0, 12.0, 41.0]
    finally:
        engine.dispose()

    phone = _page(browser, 390, 844)
    _open_pair(phone, url, "ann9")
    expect(phone.locator("#flag-hint")).to_contain_text(re.compile(r"person 3\b.* looks 41 \(target 70\)"))
    phone.locator("#flag-hint").scroll_into_view_if_needed()
    phone.screenshot(path=str(shots / "annotate-hint-390x844.png"))


# A question added to a copy of the declaration in the app's process, and nowhere else: answered after key l.
LIGHTING = ("Question('lighting', 'Which is lit more naturally?', 'Light on the faces.', PAIRWISE, region='faces', "
            "weight=0.3, keys=('a', 'b', 't'), prefix_key='l')")
LIGHTING_PRELUDE = ("from idglow import preferences\nfrom idglow.preferences import PAIRWISE, Question\n"
                    f"preferences.QUESTIONS = preferences.QUESTIONS + ({LIGHTING},)")


@pytest.fixture(scope="module")
def lighting_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("annotate-lighting")
    _demo_store(data, 8, 4, ["light1"])
    with serve_app(data, prelude=LIGHTING_PRELUDE) as url:
        yield url, data


def test_a_question_added_to_the_declaration_gets_its_key_and_summary_entry(lighting_server, browser, monkeypatch):
    """Key l then b answers the added question with image B, the answer line shows it, and the vote stored in the
    SQLite file holds it under the question's name; today's keys still answer their own questions."""
    url, data = lighting_server
    from playwright.sync_api import expect

    from idglow import preferences
    from idglow.preferences import PAIRWISE, Question  # noqa: F401 - used by LIGHTING

    monkeypatch.setattr(preferences, "QUESTIONS", preferences.QUESTIONS + (eval(LIGHTING),))  # noqa: S307
    page = _page(browser)
    _open_pair(page, url, "light1")
    expect(page.locator("#annotate-lighting")).to_contain_text("(key l, then a/b/t)")
    expect(page.locator(".prose.idglow-shortcuts")).to_contain_text("l then a/b/t lighting")
    summary = page.locator("#answer-summary")
    expect(summary).to_contain_text("l lighting –", timeout=5_000)
    _focus_pair(page)
    page.keyboard.press("l")
    expect(page.locator("#shortcut-hint")).to_have_text("lighting: press a, b or t")
    page.keyboard.press("b")  # follows l: the added question, not the overall vote
    expect(page.locator("#annotate-lighting input[value=right]")).to_be_checked()
    assert page.locator("#annotate-overall input:checked").count() == 0
    expect(summary).to_contain_text("l lighting B")
    for key in ["b", "y", "a"]:  # overall B, texture A
        page.keyboard.press(key)
    expect(summary).to_contain_text("Overall B")
    page.keyboard.press("Enter")
    expect(page.locator("#annotate-progress")).to_contain_text("1 vote(s) by you", timeout=30_000)
    [vote] = stored_votes(data, "light1")
    # B on screen is one candidate: the overall and the lighting answers name the same one, texture the other
    assert vote.lighting == vote.overall in ("a", "b") and vote.texture == {"a": "b", "b": "a"}[vote.overall]
