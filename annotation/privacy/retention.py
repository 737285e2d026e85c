"""Retention: the sweeper that deletes what a visitor left behind, and the removal of served copies.

The sweeper deletes generations and reference photos past their ``expires_at`` (files and rows), uploads nobody
processed, old served copies and old downloads. Nothing here logs an address or any other detail about a
visitor.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from annotation.privacy.uploads import (
    UploadRegistry,
    delete_file,
    remove_empty_folder,
    remove_stray_temp_files,
)
from idglow.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_RETENTION = timedelta(hours=24)
DEFAULT_UPLOAD_MAX_AGE = timedelta(minutes=5)  # an upload nobody processed
DEFAULT_COPY_MAX_AGE = timedelta(hours=1)  # served copies of downloads and exports


IMAGE_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg", ".gif", ".bmp")


def _temp_files(root: Path):
    """(folder, file) pairs of the temporary area's ``<hash>/<name>`` files."""
    if not root.is_dir():
        return
    for folder in root.iterdir():
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.is_file():
                    yield folder, entry


def _same_picture(path: Path, digests: dict[tuple[int, int], set[str]]) -> bool:
    from PIL import Image

    from annotation.store.storage import pixel_digest

    try:
        with Image.open(path) as img:
            if img.size not in digests:
                return False
        return pixel_digest(path) in digests[img.size]
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def purge_served_copies(root: str | os.PathLike[str], images: list[Any] = (), files: list[Path] = ()) -> int:
    """Delete the web server's copies of these pictures (PIL images or image files, matched by their pixels,
    whatever the copy's format) and of these files (matched by name and content). Returns how many went."""
    from annotation.store.storage import file_sha256, pixel_digest

    digests: dict[tuple[int, int], set[str]] = {}
    for image in images:
        try:
            size = image.size if hasattr(image, "size") else _image_size(image)
            digests.setdefault(tuple(size), set()).add(pixel_digest(image))
        except (OSError, ValueError):
            continue
    wanted = {}
    for path in files:
        if Path(path).is_file():
            wanted.setdefault(Path(path).name, set()).add(file_sha256(Path(path)))
    removed = 0
    for folder, entry in list(_temp_files(Path(root))):
        match = entry.name in wanted and file_sha256(entry) in wanted[entry.name]
        if not match and digests and entry.suffix.lower() in IMAGE_SUFFIXES:
            match = _same_picture(entry, digests)
        if match and delete_file(entry):
            removed += 1
            remove_empty_folder(folder)
    return removed


def _image_size(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        return img.size


def forget_visitor_files(data_dir: str | os.PathLike[str], visitor_id: str, images: list[Any],
                         keep: set[tuple[str, str]] = frozenset()) -> int:
    """Remove a visitor's download folder and every served copy of their pictures (image files, read before
    they are deleted, or PIL images such as face crops that were shown but never stored) and downloads from
    the temporary area; a download whose (name, sha256) is in ``keep`` (another visitor has the same file, and
    so the same served copy) keeps its served copy. Returns how many files went."""
    from annotation.store.storage import file_sha256, temp_area, visitor_downloads

    folder = visitor_downloads(data_dir, visitor_id)
    downloads = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    served = [p for p in downloads if not keep or (p.name, file_sha256(p)) not in keep]
    pictures = [p for p in images if not isinstance(p, (str, os.PathLike)) or Path(p).is_file()]
    removed = purge_served_copies(temp_area(data_dir), pictures, served)
    removed += len(downloads)
    shutil.rmtree(folder, ignore_errors=True)
    return removed


def sweep_temp_area(root: str | os.PathLike[str], now: float, *, upload_max_age: float, copy_max_age: float,
                    image_max_age: float, keep_between: tuple[float, float] = (0.0, 0.0),
                    registry: UploadRegistry) -> int:
    """One pass over the temporary area: uploads nobody processed after ``upload_max_age`` seconds, served
    copies of files (downloads, exports) after ``copy_max_age``, served pictures after ``image_max_age``,
    and the empty files left per upload. Files last written within ``keep_between`` (the app's own files,
    written while it was built) stay. Returns how many files were removed."""
    root = Path(root).resolve()
    removed = remove_stray_temp_files(root, now)
    for path in registry.older_than(now - upload_max_age):
        if Path(path).is_relative_to(root):
            registry.forget(path)
            removed += delete_file(Path(path))
            remove_empty_folder(Path(path).parent)
    for folder, entry in list(_temp_files(root)):
        try:
            written = entry.stat().st_mtime
        except OSError:
            continue
        if registry.is_upload(entry) or keep_between[0] <= written <= keep_between[1]:
            continue
        limit = image_max_age if entry.suffix.lower() in IMAGE_SUFFIXES else copy_max_age
        if now - written > limit and delete_file(entry):
            removed += 1
            remove_empty_folder(folder)
    return removed


def sweep_downloads(data_dir: str | os.PathLike[str], now: float, max_age: float) -> int:
    """Delete download files older than ``max_age`` seconds (and the visitor folders they leave empty)."""
    from annotation.store.storage import DOWNLOADS_DIR

    removed = 0
    base = Path(data_dir) / DOWNLOADS_DIR
    if not base.is_dir():
        return 0
    for folder in base.iterdir():
        for entry in folder.rglob("*") if folder.is_dir() else [folder]:
            try:
                old = entry.is_file() and now - entry.stat().st_mtime > max_age
            except OSError:
                continue
            removed += old and delete_file(entry)
        if folder.is_dir():
            remove_empty_folder(folder)
    return removed


def expiry(now: datetime, retention: timedelta) -> datetime:
    """When data created at ``now`` expires; ``now`` must be timezone-aware."""
    if now.tzinfo is None:
        raise InputError(f"now={now!r} must be timezone-aware")
    return now + retention


@dataclass(frozen=True)
class SweepResult:
    """What one sweep deleted: generations, reference photos, their files, temporary-area files and download
    files."""

    generations: int
    reference_photos: int
    files: int
    temp_files: int
    downloads: int


class RetentionSweeper:
    """Deletes what a visitor left behind, in passes:

    - generations and reference photos past their ``expires_at`` (rows, files and the served copies of
      their pictures), every ``interval``;
    - in the web server's temporary area: uploads nobody processed after ``upload_max_age``, served copies of
      downloads and exports after ``copy_max_age``, served pictures after ``retention``, and the files of an
      earlier run of the app at the first pass; download files after ``retention`` — every ``file_interval``.

    ``sweep_once()`` runs one full pass (tests call it with a chosen ``now``); ``start()`` runs passes in a
    daemon thread until ``stop()``.
    """

    def __init__(self, sessions, data_dir: str | os.PathLike[str], *, interval: timedelta = timedelta(minutes=10),
                 retention: timedelta = DEFAULT_RETENTION, upload_max_age: timedelta = DEFAULT_UPLOAD_MAX_AGE,
                 copy_max_age: timedelta = DEFAULT_COPY_MAX_AGE, file_interval: timedelta = timedelta(minutes=1),
                 temp_dir: str | os.PathLike[str] | None = None, registry: UploadRegistry | None = None):
        from annotation.store.storage import temp_area

        for name, value in (("interval", interval), ("file_interval", file_interval), ("retention", retention),
                            ("upload_max_age", upload_max_age), ("copy_max_age", copy_max_age)):
            if value.total_seconds() <= 0:
                raise InputError(f"sweep {name} must be positive, got {value}")
        self.sessions = sessions
        self.data_dir = Path(data_dir)
        self.temp_dir = Path(temp_dir) if temp_dir is not None else temp_area(data_dir)
        self.interval, self.file_interval, self.retention = interval, file_interval, retention
        self.upload_max_age, self.copy_max_age = upload_max_age, copy_max_age
        self.registry = registry if registry is not None else UploadRegistry()  # the app passes its own
        self._born = time.time()
        self._started = self._born
        self._last_db_pass = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep_files(self, now: float | None = None) -> tuple[int, int]:
        """(temporary-area files, download files) removed by one pass over the files."""
        now = time.time() if now is None else now
        temp = sweep_temp_area(self.temp_dir, now, upload_max_age=self.upload_max_age.total_seconds(),
                               copy_max_age=self.copy_max_age.total_seconds(),
                               image_max_age=self.retention.total_seconds(),
                               keep_between=(self._born, self._started), registry=self.registry)
        return temp, sweep_downloads(self.data_dir, now, self.retention.total_seconds())

    def sweep_once(self, now: datetime | None = None) -> SweepResult:
        from annotation.store.candidates import sweep_expired
        from annotation.store.storage import temp_area
        from db.types import utcnow

        now = now or utcnow()
        area = temp_area(self.data_dir)
        with self.sessions() as session:
            db = sweep_expired(session, now, self.data_dir, lambda files: purge_served_copies(area, files))
        self._last_db_pass = time.monotonic()
        temp, downloads = self.sweep_files(now.timestamp())
        return SweepResult(db.generations, db.reference_photos, db.files, temp, downloads)

    def _clear_earlier_run(self) -> int:
        """Temporary-area files written before this app was built belong to an earlier run: none of its
        pages can still use them."""
        return sweep_temp_area(self.temp_dir, self._born, upload_max_age=0.0, copy_max_age=0.0, image_max_age=0.0,
                               registry=self.registry)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if time.monotonic() - self._last_db_pass >= self.interval.total_seconds():
                    self.sweep_once()
                else:
                    self.sweep_files()
            except Exception:  # keep sweeping; the next pass retries
                logger.exception("retention sweep failed")
            self._stop.wait(min(self.interval, self.file_interval).total_seconds())

    def start(self) -> RetentionSweeper:
        """Start the passes (call it once the app is built: files written until now are the app's own)."""
        if self._thread is None or not self._thread.is_alive():
            self._started = time.time()
            self._clear_earlier_run()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="idglow-retention", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
