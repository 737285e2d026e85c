"""A researcher's export download reaches only the browser and signed-in session that made it, and expires."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("gradio_client")

from gradio_client import Client  # noqa: E402

PASSWORD = "correct-horse-battery"
TTL_S = 12.0
EXPORT = dict(format="parquet", with_images=False, tie_policy="half", min_votes=1, since="")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from app_fixtures import running_app

    users = {"rita": (PASSWORD, "researcher"), "remy": (PASSWORD, "researcher"), "anna": (PASSWORD, "annotator")}
    with running_app(tmp_path_factory.mktemp("export-data"), users=users, export_minutes=TTL_S / 60) as running:
        yield running


def _signed_in(app, name: str) -> Client:
    client = Client(app.url, verbose=False, download_files=False)
    client.predict(name, PASSWORD, api_name="/sign_in")
    return client


def _export(client: Client) -> tuple[list[str], str]:
    """(file URLs, status) of one export."""
    files, status = client.predict(**EXPORT, api_name="/export")
    return [f["url"] for f in files], status


def _served_path(url: str) -> Path:
    return Path(url.split("/file=", 1)[1])


def _get(url: str, client: Client | None = None, **cookies) -> httpx.Response:
    jar = dict(client.cookies) if client is not None else {}
    jar.update(cookies)
    return httpx.get(url, cookies=jar, timeout=30)


def test_the_maker_downloads_and_nobody_else_does(app):
    from annotation.privacy.private_downloads import BROWSER_COOKIE

    rita = _signed_in(app, "rita")
    assert BROWSER_COOKIE in rita.cookies, "the app gives every client a browser cookie on its first answer"
    urls, status = _export(rita)
    assert urls and urls[0].endswith(".zip"), urls
    assert "only in this browser while you are signed in" in status
    for url in urls:
        answer = _get(url, rita)
        assert answer.status_code == 200 and answer.content == _served_path(url).read_bytes()

    remy, anna = _signed_in(app, "remy"), _signed_in(app, "anna")
    for url in urls:
        assert _get(url).status_code == 404, "a client without cookies"
        assert _get(url, **{BROWSER_COOKIE: "x" * 43}).status_code == 404, "a made-up browser id"
        assert _get(url, remy).status_code == 404, "another researcher"
        assert _get(url, anna).status_code == 404, "an annotator"
        older = url.replace("/gradio_api/file=", "/gradio_api/file/")
        assert _get(older).status_code == 404 and _get(older, rita).status_code == 200, "Gradio's older file route"
        assert httpx.head(url, timeout=30).status_code == 404
    assert remy.predict(**EXPORT, api_name="/export")[0][0]["url"] != urls[0]


def test_signing_out_or_losing_the_role_closes_the_download(app):
    from annotation.store.users import set_role

    rita = _signed_in(app, "rita")
    urls, _ = _export(rita)
    assert _get(urls[0], rita).status_code == 200
    with app.services.auth.sessions() as session:
        set_role(session, "rita", "annotator")
    try:
        assert _get(urls[0], rita).status_code == 404, "a demoted researcher"
    finally:
        with app.services.auth.sessions() as session:
            set_role(session, "rita", "researcher")
    assert _get(urls[0], rita).status_code == 200
    rita.predict(api_name="/sign_out")
    assert _get(urls[0], rita).status_code == 404, "after sign-out"


def test_an_export_expires_for_everyone_and_leaves_the_disk(app):
    rita = _signed_in(app, "rita")
    urls, _ = _export(rita)
    paths = [_served_path(u) for u in urls]
    assert all(p.is_file() for p in paths) and _get(urls[0], rita).status_code == 200
    time.sleep(TTL_S + 1.5)
    assert not any(p.exists() for p in paths), "the expiry deletes the served copies without being asked"
    for url in urls:
        assert _get(url, rita).status_code == 404 and _get(url).status_code == 404


def test_a_raw_call_without_a_browser_cookie_gets_no_downloadable_files(app):
    """An export asked for without any browser cookie is published to nobody, and the status says why."""
    import json

    rita = _signed_in(app, "rita")
    body = {"data": [None, *EXPORT.values()], "session_hash": rita.session_hash, "fn_index": _fn_index(app, "export")}
    assert httpx.post(f"{app.url}gradio_api/queue/join", json=body, timeout=30).status_code == 200
    with httpx.stream("GET", f"{app.url}gradio_api/queue/data", params={"session_hash": rita.session_hash},
                      timeout=120) as stream:
        done = next(json.loads(line[6:]) for line in stream.iter_lines()
                    if line.startswith("data: ") and json.loads(line[6:]).get("msg") == "process_completed")
    files, status = done["output"]["data"]
    assert "sent no `idglow_browser` cookie" in status["value"] if isinstance(status, dict) else status
    for f in files:
        assert _get(f["url"], rita).status_code == 404 and _get(f["url"]).status_code == 404


def test_a_file_path_no_machine_can_name_is_refused_without_a_server_error(app):
    for path in ("/tmp/a%00b.zip", "/" + "x" * 5000):
        assert httpx.get(f"{app.url}gradio_api/file={path}", timeout=30).status_code in (400, 403, 404)


def _fn_index(app, api_name: str) -> int:
    return next(k for k, fn in app.demo.fns.items() if fn.api_name == api_name)


def test_private_downloads_keep_a_file_shared_by_two_grants_until_the_last_expires(tmp_path):
    """Two researchers exporting the same bytes get the same served copy: it stays until both grants expired."""
    from annotation.privacy.private_downloads import PrivateDownloads

    now = [1000.0]
    downloads = PrivateDownloads(clock=lambda: now[0])
    source = tmp_path / "train.parquet"
    source.write_bytes(b"same rows")
    cache = tmp_path / "cache"
    revoked = []
    [first] = downloads.publish([source], browser="a" * 43, allowed=lambda: not revoked, ttl_s=100, cache_dir=cache)
    now[0] += 50
    [second] = downloads.publish([source], browser="b" * 43, allowed=lambda: True, ttl_s=100, cache_dir=cache)
    assert first == second and Path(first).read_bytes() == b"same rows"
    assert downloads.allows(first, "a" * 43) and downloads.allows(first, "b" * 43)
    assert not downloads.allows(first, None) and not downloads.allows(first, "c" * 43)
    revoked.append(True)
    assert not downloads.allows(first, "a" * 43), "a session that lost its sign-in"
    now[0] += 60  # the first grant expired, the second has 40 s left
    assert downloads.expire() == 0 and Path(first).is_file() and not downloads.allows(first, "a" * 43)
    now[0] += 41
    assert downloads.expire() == 1 and not Path(first).exists() and not Path(first).parent.exists()
    assert not downloads.is_private(first) and source.read_bytes() == b"same rows"
