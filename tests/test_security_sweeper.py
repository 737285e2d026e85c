"""The retention sweeper's passes over the temporary area and the download folders (real files, aged)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from store_fixtures import make_store

from annotation.privacy.retention import RetentionSweeper
from annotation.privacy.uploads import UploadRegistry, discard_upload
from annotation.store.storage import temp_area, visitor_downloads


def _file(path: Path, body: bytes = b"x", age_s: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    if age_s:
        stamp = time.time() - age_s
        os.utime(path, (stamp, stamp))
    return path


def test_temp_area_pass_removes_each_kind_after_its_own_age(tmp_path):
    store = make_store(tmp_path / "data")
    registry = UploadRegistry()
    sweeper = RetentionSweeper(store.sessions, store.data_dir, registry=registry)
    tmp = temp_area(store.data_dir)
    registry.watch(tmp)
    upload = _file(tmp / "a1" / "holiday.jpg")
    registry.add([str(upload)], when=time.time() - 6 * 60)  # nobody processed it for 6 minutes
    fresh_upload = _file(tmp / "a2" / "new.jpg")
    registry.add([str(fresh_upload)])
    old_zip = _file(tmp / "b1" / "idglow-picnic.zip", age_s=2 * 3600)
    new_zip = _file(tmp / "b2" / "export.zip", age_s=60)
    old_picture = _file(tmp / "c1" / "image.png", age_s=25 * 3600)
    day_picture = _file(tmp / "c2" / "image.png", age_s=20 * 3600)
    stray = _file(tmp / "tmpabc123", b"", age_s=60)
    arriving = _file(tmp / "tmpdef456", b"")  # an upload whose first bytes are on their way
    old_download = _file(visitor_downloads(store.data_dir, "v" * 32) / "idglow.zip", age_s=25 * 3600)

    temp, downloads = sweeper.sweep_files()

    gone = [upload, old_zip, old_picture, stray, old_download]
    kept = [fresh_upload, new_zip, day_picture, arriving]
    assert [p.exists() for p in gone] == [False] * len(gone)
    assert [p.exists() for p in kept] == [True] * len(kept)
    assert (temp, downloads) == (4, 1)
    assert not (tmp / "a1").exists() and not old_download.parent.exists()


def test_first_pass_clears_an_earlier_run_but_keeps_the_apps_own_files(tmp_path):
    store = make_store(tmp_path / "data")
    tmp = temp_area(store.data_dir)
    earlier = _file(tmp / "d1" / "image.png", age_s=30)  # served by the previous run of the app
    sweeper = RetentionSweeper(store.sessions, store.data_dir, registry=UploadRegistry())
    built = _file(tmp / "d2" / "example.png")  # written while the app was being built
    try:
        sweeper.start()
        assert not earlier.exists() and built.exists()
        sweeper.sweep_files(now=time.time() + 48 * 3600)
        assert built.exists(), "the app's own files stay for the whole run"
    finally:
        sweeper.stop()


def test_discard_upload_deletes_only_recorded_uploads_in_a_watched_area(tmp_path):
    registry = UploadRegistry()
    registry.watch(tmp_path / "tmp")
    served = _file(tmp_path / "tmp" / "e1" / "image.png")
    upload = _file(tmp_path / "tmp" / "e2" / "me.jpg")
    registry.add([str(upload)])
    elsewhere = _file(tmp_path / "handler-test" / "me.png")
    assert discard_upload(str(served), registry) is False and served.exists()
    assert discard_upload(str(upload), registry) is True and not upload.parent.exists()
    assert not registry.is_upload(upload)
    assert discard_upload(str(elsewhere), registry) is True and not elsewhere.exists()


def test_the_same_photo_uploaded_by_two_visitors_stays_until_both_are_done(tmp_path):
    """The web server stores identical uploads (same bytes, same name) at one path: the first visitor's
    processing must not delete the file the second visitor is about to process."""
    registry = UploadRegistry()
    tmp = tmp_path / "tmp"
    registry.watch(tmp)
    shared = _file(tmp / "f1" / "grandma.jpg")
    registry.add([str(shared)])  # visitor 1
    registry.add([str(shared)])  # visitor 2, the same bytes
    assert discard_upload(str(shared), registry) is False and shared.exists()
    assert discard_upload(str(shared), registry) is True and not shared.exists()
    assert not registry.is_upload(shared)


def test_an_unprocessed_copy_of_a_shared_upload_is_still_swept(tmp_path):
    store = make_store(tmp_path / "data")
    registry = UploadRegistry()
    sweeper = RetentionSweeper(store.sessions, store.data_dir, registry=registry)
    tmp = temp_area(store.data_dir)
    registry.watch(tmp)
    shared = _file(tmp / "g1" / "grandpa.jpg")
    registry.add([str(shared)], when=time.time() - 7 * 60)  # a visitor who never processed it
    registry.add([str(shared)], when=time.time() - 6 * 60)
    assert discard_upload(str(shared), registry) is False and shared.exists()  # the other visitor's, processed
    sweeper.sweep_files()
    assert not shared.exists() and not registry.is_upload(shared)
