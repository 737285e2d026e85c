"""What a visitor leaves in the running app's files: deletion, expiry, raw uploads and the temporary area."""

from __future__ import annotations

import io
import json
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytest.importorskip("gradio_client")

from gradio_client import Client, handle_file  # noqa: E402

GENERATE = dict(task="fusion", consent=True, steps=2, num_images=2, size=64, model_versions=["tiny-demo"])


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from app_fixtures import running_app

    with running_app(tmp_path_factory.mktemp("app-data")) as running:
        yield running


def _client(app) -> Client:
    return Client(app.url, verbose=False, download_files=False)


def _temp(app) -> Path:
    from annotation.store.storage import temp_area

    return temp_area(app.services.generation.data_dir)


def _file_urls(value) -> list[str]:
    """Every served file URL inside a gradio_client answer."""
    found = []
    if isinstance(value, dict):
        if isinstance(value.get("url"), str) and "/file=" in value["url"]:
            found.append(value["url"])
        for v in value.values():
            found += _file_urls(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            found += _file_urls(v)
    return found


def _gps_jpeg(source) -> bytes:
    image = Image.open(source).convert("RGB")
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)}  # GPS IFD
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def _raw_upload(app, name: str, data: bytes) -> str:
    answer = httpx.post(f"{app.url}gradio_api/upload", files={"files": (name, data, "image/jpeg")}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()[0]


def _call(app, api_name: str, **values) -> list:
    """A raw Gradio API call (POST /call/<name>, then read the event stream) with the named inputs (the others
    None); returns the last event's kind and payload."""
    [fn] = [fn for fn in app.demo.fns.values() if fn.api_name == api_name]
    data = [values.get(name, getattr(widget, "value", None)) for name, widget in zip(fn.input_parameter_names,
                                                                                      fn.inputs, strict=True)]
    event = httpx.post(f"{app.url}gradio_api/call/{api_name}", json={"data": data}, timeout=30).json()["event_id"]
    with httpx.stream("GET", f"{app.url}gradio_api/call/{api_name}/{event}", timeout=120) as stream:
        lines = list(stream.iter_lines())
    kinds = [line[len("event: "):] for line in lines if line.startswith("event: ")]
    payloads = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    return [kinds[-1], json.loads(payloads[-1]) if payloads[-1] not in ("", "null") else None]


def _upload(client: Client, *portraits) -> tuple:
    return client.predict(files=[handle_file(str(p)) for p in portraits], consent=True, api_name="/upload")


def _generate_as_visitor(app, sample_portraits):
    """Pictures shown (face crops and candidates) and downloads offered (PNGs and the archive), as URLs."""
    visitor = _client(app)
    crops = _upload(visitor, sample_portraits["person1"], sample_portraits["person2"])
    gallery, scores, _, _, pngs, archive = visitor.predict(**GENERATE, seed=11, label_0="Ann", label_1="Bob",
                                                           api_name="/generate")
    return visitor, _file_urls(crops) + _file_urls([gallery, scores]), _file_urls([pngs, archive])


def test_every_picture_url_a_visitor_was_shown_is_gone_after_delete_my_data(app, sample_portraits):
    visitor, pictures, downloads = _generate_as_visitor(app, sample_portraits)
    assert len(pictures) == 4, pictures  # two crops and two candidates
    assert len(downloads) == 3, downloads  # two PNGs and the archive
    with httpx.Client(timeout=30) as anonymous:  # no cookie, no session: only the URL
        assert [anonymous.get(u).status_code for u in pictures + downloads] == [200] * (len(pictures) + len(downloads))
        message = visitor.predict(api_name="/delete_my_data")[-1]
        assert "Deleted 1 generation(s)" in message
        assert [anonymous.get(u).status_code for u in pictures] == [404] * len(pictures)
        folder = Path(app.services.generation.data_dir) / "downloads"
        assert folder.is_dir(), "the Generate tab writes its downloads under <data_dir>/downloads/<visitor>/"
        assert [anonymous.get(u).status_code for u in downloads] == [404] * len(downloads)
        assert [p for p in folder.rglob("*") if p.is_file()] == []


def test_a_visitors_download_folder_and_its_served_copy_go_with_their_data(tmp_path):
    """The download folder's files and the copies Gradio's own cache function makes of them."""
    from gradio.processing_utils import save_file_to_cache
    from store_fixtures import make_store

    from annotation.privacy.visitors import delete_visitor
    from annotation.store.storage import temp_area, visitor_downloads

    store = make_store(tmp_path / "data")
    mine, theirs = visitor_downloads(store.data_dir, "a" * 32), visitor_downloads(store.data_dir, "b" * 32)
    copies = []
    for folder, body in ((mine, b"mine"), (theirs, b"theirs")):
        folder.mkdir(parents=True)
        (folder / "idglow-picnic.zip").write_bytes(body)
        copies.append(Path(save_file_to_cache(folder / "idglow-picnic.zip", str(temp_area(store.data_dir)))))
    with store.sessions() as session:
        result = delete_visitor(session, "a" * 32, store.data_dir)
    assert result.files == 2  # the download and its served copy
    assert not mine.exists() and not copies[0].exists()
    assert (theirs / "idglow-picnic.zip").read_bytes() == b"theirs" and copies[1].read_bytes() == b"theirs"


def test_raw_upload_with_gps_is_never_served_and_is_swept_within_minutes(app, sample_portraits):
    from annotation.privacy.retention import RetentionSweeper

    raw = _gps_jpeg(sample_portraits["person3"])
    path = _raw_upload(app, "holiday.jpg", raw)
    assert Path(path).read_bytes() == raw and Path(path).is_relative_to(_temp(app))
    answer = httpx.get(f"{app.url}gradio_api/file={path}", timeout=30)
    assert answer.status_code == 404 and raw[:64] not in answer.content
    sweeper = RetentionSweeper(app.services.auth.sessions, app.services.generation.data_dir,
                               registry=app.services.uploads)
    sweeper.sweep_files(now=time.time() + 60)
    assert Path(path).exists(), "an upload is kept for a few minutes, for the page that is processing it"
    sweeper.sweep_files(now=time.time() + sweeper.upload_max_age.total_seconds() + 1)
    assert not Path(path).exists() and not Path(path).parent.exists()


def test_a_temp_area_path_sent_as_an_upload_deletes_nothing(app, sample_portraits):
    owner = _client(app)
    _upload(owner, sample_portraits["person4"])
    shown = owner.predict(**{**GENERATE, "num_images": 1}, seed=5, label_0="Dee", api_name="/generate")
    served = _file_urls(shown)  # the candidate, its PNG and the archive: copies the server made, not uploads
    assert len(served) == 3, served
    for url in served:
        target = url.split("/file=", 1)[1]
        assert Path(target).is_file()
        _call(app, "upload", files=[{"path": target, "meta": {"_type": "gradio.FileData"}}], consent=True)
        assert Path(target).is_file(), "a served copy named as someone's upload must not be deleted"
        assert httpx.get(url, timeout=30).status_code == 200


def test_a_processed_upload_leaves_nothing_in_the_temp_area(app, sample_portraits):
    from annotation.privacy.retention import RetentionSweeper

    def top_level_files() -> list[Path]:
        return [p for p in _temp(app).iterdir() if p.is_file()]

    before = set(top_level_files())
    path = _raw_upload(app, "me.jpg", _gps_jpeg(sample_portraits["person2"]))
    kind, out = _call(app, "upload", files=[{"path": path, "meta": {"_type": "gradio.FileData"}}], consent=True)
    assert kind == "complete", out
    assert not Path(path).exists() and not Path(path).parent.exists(), "the original must be deleted once decoded"
    sweeper = RetentionSweeper(app.services.auth.sessions, app.services.generation.data_dir,
                               registry=app.services.uploads)
    sweeper.sweep_files(now=time.time() + 60)  # the next pass of the sweeper, a minute later
    assert set(top_level_files()) - before == set(), "no empty temporary file may be left per upload"


def test_expired_generation_takes_its_served_copies_with_it(app, sample_portraits):
    from annotation.privacy.retention import RetentionSweeper
    from db.types import utcnow

    visitor = _client(app)
    crops = _upload(visitor, sample_portraits["person5"])
    shown = visitor.predict(**{**GENERATE, "num_images": 1}, seed=21, label_0="Cy", api_name="/generate")
    urls = _file_urls(crops) + _file_urls(shown)
    assert [httpx.get(u, timeout=30).status_code for u in urls] == [200] * len(urls)
    sweeper = RetentionSweeper(app.services.auth.sessions, app.services.generation.data_dir,
                               registry=app.services.uploads)
    result = sweeper.sweep_once(now=utcnow() + timedelta(hours=25))
    assert result.generations >= 1
    assert [httpx.get(u, timeout=30).status_code for u in urls] == [404] * len(urls)


def test_a_crop_shown_but_never_stored_can_be_purged_by_its_pixels(tmp_path):
    """Gradio's own cache function writes the shown crop (the app's galleries use PNG); the purge finds it by
    its pixels and leaves another picture alone."""
    import numpy as np
    from gradio.processing_utils import save_pil_to_cache

    from annotation.privacy.retention import forget_visitor_files
    from annotation.store.storage import temp_area

    rng = np.random.default_rng(0)
    crop = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    other = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    shown = Path(save_pil_to_cache(crop, str(temp_area(tmp_path)), format="png"))
    kept = Path(save_pil_to_cache(other, str(temp_area(tmp_path)), format="png"))
    assert forget_visitor_files(tmp_path, "c" * 32, [crop]) == 1
    assert not shown.exists() and kept.exists()


def test_crops_of_a_photo_removed_from_the_list_go_with_delete_my_data(app, sample_portraits):
    """Upload, clear the photo list (× or clear), then Delete: the crop shown before is gone too."""
    visitor = _client(app)
    crops = _file_urls(_upload(visitor, sample_portraits["person3"]))
    assert len(crops) == 1, crops
    visitor.predict(files=[], consent=True, api_name="/upload")  # the list cleared: no card on the page
    with httpx.Client(timeout=30) as anonymous:
        assert anonymous.get(crops[0]).status_code == 200
        message = visitor.predict(api_name="/delete_my_data")[-1]
        assert "Deleted" in message
        assert anonymous.get(crops[0]).status_code == 404, message


def test_deleting_pooled_results_never_deletes_annotators_votes(app, sample_portraits):
    """The pool rule: results in the annotation pool that annotators voted on stay (unlinked from the visitor)
    with their votes; the answer says so. Checked in the database."""
    from sqlalchemy import func, select

    from annotation.store.users import create_user
    from db.models import Generation, Vote

    with app.services.auth.sessions() as session:
        create_user(session, "ada", "correct-horse-battery", "annotator")
    visitor = _client(app)
    _upload(visitor, sample_portraits["person1"], sample_portraits["person2"])
    visitor.predict(**GENERATE, seed=41, label_0="Ann", label_1="Bob", api_name="/generate")
    assert "added to the annotation pool" in visitor.predict(api_name="/add_to_pool")
    annotator = _client(app)
    annotator.predict("ada", "correct-horse-battery", api_name="/sign_in")
    annotator.predict(api_name="/annotate_show")
    saved = annotator.predict("left", "clear", None, None, *([None] * 6), api_name="/vote")
    assert "Vote saved" in saved[4]
    with app.services.auth.sessions() as session:
        votes_before = session.scalar(select(func.count()).select_from(Vote))
        unlinked_before = session.scalar(select(func.count()).select_from(Generation)
                                         .where(Generation.visitor_id.is_(None)))
    message = visitor.predict(api_name="/delete_my_data")[-1]
    assert "stay there, no longer linked to you" in message and "votes are kept" in message, message
    with app.services.auth.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Vote)) == votes_before >= 1
        assert session.scalar(select(func.count()).select_from(Generation)
                              .where(Generation.visitor_id.is_(None))) == unlinked_before + 1


def test_one_visitors_delete_leaves_anothers_identical_pictures_served(app):
    """Two visitors generate the example family with the same seed: identical pictures, one served copy each.
    A's Delete removes A's data; every one of B's URLs still answers."""
    urls = {}
    for who in ("a", "b"):
        visitor = _client(app)
        visitor.predict(api_name="/example_family")
        gallery, scores, _, _, pngs, archive = visitor.predict(**GENERATE, seed=77, api_name="/generate")
        urls[who] = (visitor, _file_urls([gallery, scores]) + _file_urls([pngs]))
    assert len(urls["b"][1]) == 4 and set(urls["a"][1]) == set(urls["b"][1]), "identical pictures, shared copies"
    message = urls["a"][0].predict(api_name="/delete_my_data")[-1]
    assert "Deleted 1 generation(s)" in message
    with httpx.Client(timeout=30) as anonymous:
        assert [anonymous.get(u).status_code for u in urls["b"][1]] == [200] * 4
    urls["b"][0].predict(api_name="/delete_my_data")
    with httpx.Client(timeout=30) as anonymous:
        assert [anonymous.get(u).status_code for u in urls["b"][1]] == [404] * 4, "the last one out removes them"
