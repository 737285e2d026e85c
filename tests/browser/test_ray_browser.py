"""The Generate tab in Debian's chromium (Playwright) on `python app.py --generator ray`, against `idglow serve`
with one CPU replica of the tiny model at a lower CPU priority (`--replica-nice`, as for replicas that share
the app's machine) on a real local Ray head: a visitor generates and the stored rows are in
the SQLite file; a visitor who closes the page during a generation stops it on the replica (the replica's count
of generations stopped at a step goes up) and frees its queue place (with no wait list, the next visitor is
served at once instead of being told the generator is busy); a page kept open gets its images."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.browser.conftest import fill_numbers, serve_app

pytest.importorskip("ray.serve")

pytestmark = [pytest.mark.browser, pytest.mark.ray]

REPLICA_NICE = 15


@pytest.fixture(scope="module")
def cluster():
    """A local Ray head with `idglow serve --replicas 1 --replica-nice 15` deployed on it; Ray's own lowering of
    its workers' priority is off, so the replica's priority is the flag's doing."""
    from serve_cluster import LocalRayHead
    from test_serve_deployment import _idglow

    temp = Path(tempfile.mkdtemp(prefix="idgrayb", dir="/tmp"))
    head = LocalRayHead(temp, num_cpus=2, worker_niceness=0).start()  # replicas start at this process's priority
    try:
        out = _idglow("serve", "--ray-address", head.address, "--replicas", "1", "--replica-nice", str(REPLICA_NICE))
        assert out.returncode == 0 and "1 RUNNING" in out.stdout, out.stdout + out.stderr
        yield head
    finally:
        head.stop()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def replica(cluster):
    """The deployment's client, in a process of its own (this process never joins the cluster)."""
    from idglow.serving_process import GeneratorProcess

    client = GeneratorProcess(cluster.address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def server(cluster, tmp_path_factory):
    """The app in ray mode; no wait list and one generation per visitor, so a place left taken shows as a busy
    answer to the next visitor."""
    data = tmp_path_factory.mktemp("ray-browser-data")
    with serve_app(data, "--generator", "ray", "--ray-address", cluster.address, "--max-queue", "0",
                   "--max-per-visitor", "1") as url:
        yield url, data


def _ready_page(browser, url: str, portraits, steps: int, images: int, seed: int):
    """A new page with two people uploaded and the steps, number of images and seed set."""
    from playwright.sync_api import expect

    page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
    page.goto(url)
    page.locator("#gen-consent input[type=checkbox]").check()
    page.locator("#gen-files input[type=file]").set_input_files(
        [str(portraits["person1"]), str(portraits["person2"])])
    expect(page.locator(".gen-card:visible")).to_have_count(2, timeout=90_000)
    page.locator("#gen-settings").get_by_text("Prompt and image settings").click()
    expect(page.locator("#gen-steps input[type=range]")).to_be_visible()
    fill_numbers([(page.locator(f"{selector} input[type=number]").first, value)
                  for selector, value in (("#gen-steps", steps), ("#gen-num", images), ("#gen-seed-input", seed))])
    return page


def _stored(data: Path) -> list[tuple]:
    """(generation id, visitor, steps, candidate seed, image file exists) of every stored candidate."""
    from sqlalchemy import select

    from db.engine import make_engine, make_session_factory
    from db.models import Candidate, Generation

    engine = make_engine(f"sqlite:///{data / 'idglow.db'}")
    try:
        with make_session_factory(engine)() as session:
            rows = session.execute(select(Generation.id, Generation.visitor_id, Generation.params, Candidate.seed,
                                          Candidate.image_path).join(Candidate.generation)
                                   .order_by(Candidate.id)).all()
    finally:
        engine.dispose()
    return [(g, v, p["num_inference_steps"], s, (data / path).exists() or Path(path).exists())
            for g, v, p, s, path in rows]


def _generate_to_the_end(page) -> None:
    from playwright.sync_api import expect

    page.locator("#gen-run").click()
    expect(page.locator("#gen-gallery img").first).to_be_visible(timeout=180_000)
    expect(page.locator("#gen-seed")).to_contain_text("Used seed", timeout=30_000)


def test_a_visitor_generates_in_ray_mode_and_the_rows_are_stored(server, browser, replica, sample_portraits):
    import os

    url, data = server
    info = replica.info()
    stopped = info["stopped"]
    assert info["nice"] == max(REPLICA_NICE, os.getpriority(os.PRIO_PROCESS, 0))  # every thread of the replica
    page = _ready_page(browser, url, sample_portraits, steps=3, images=2, seed=11)
    _generate_to_the_end(page)
    rows = _stored(data)
    assert [(r[2], r[3], r[4]) for r in rows] == [(3, 11, True), (3, 12, True)]
    assert len({r[0] for r in rows}) == 1 and rows[0][1]
    assert replica.info()["stopped"] == stopped  # a page kept open: nothing stopped


def _wait_for_stopped(replica, above: int, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stopped = replica.info(timeout_s=timeout_s)["stopped"]
        if stopped > above:
            return stopped
        time.sleep(0.5)
    return stopped


def test_closing_the_page_stops_the_generation_on_the_replica_and_frees_the_place(server, browser, replica,
                                                                                  sample_portraits):
    from playwright.sync_api import expect

    url, data = server
    stored_before, stopped_before = _stored(data), replica.info()["stopped"]
    page = _ready_page(browser, url, sample_portraits, steps=60, images=8, seed=21)  # the longest allowed
    page.locator("#gen-run").click()
    expect(page.locator("#gen-gallery").get_by_text(re.compile(r"Generating"))).to_be_visible(timeout=120_000)
    closed = time.monotonic()
    page.context.close()
    assert _wait_for_stopped(replica, stopped_before) == stopped_before + 1, "the replica did not stop early"
    stopped_after_s = time.monotonic() - closed
    assert _stored(data) == stored_before  # nothing of the closed page's generation was stored

    # the place is free: with no wait list, a taken place would answer the next visitor "busy"
    page = _ready_page(browser, url, sample_portraits, steps=2, images=1, seed=31)
    _generate_to_the_end(page)
    assert [(r[2], r[3]) for r in _stored(data)[len(stored_before):]] == [(2, 31)]
    expect(page.get_by_text("The generator is busy")).to_have_count(0)
    print(f"replica stopped {stopped_after_s:.1f} s after the page closed")


def test_a_page_kept_open_during_a_long_generation_gets_its_images(server, browser, replica, sample_portraits):
    """The control of the previous test: the same long generation, the page left open, completes."""
    url, data = server
    stored_before, stopped_before = len(_stored(data)), replica.info()["stopped"]
    page = _ready_page(browser, url, sample_portraits, steps=60, images=8, seed=41)
    _generate_to_the_end(page)
    assert len(_stored(data)) == stored_before + 8
    assert replica.info()["stopped"] == stopped_before
