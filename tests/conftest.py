"""Test configuration: offline, quiet, deterministic."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

# Every process the suite starts inherits this mark, so that the session's end can find the ones still running
# (an orphaned chromium renderer has no parent left to find it by). pytest-xdist workers keep their controller's
# mark, and the controller checks at the end, once the workers are gone.
SESSION_MARK = "IDGLOW_TEST_SESSION"
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if not (XDIST_WORKER and os.environ.get(SESSION_MARK)):
    os.environ[SESSION_MARK] = uuid.uuid4().hex
LEFTOVER_GRACE_S = 10.0  # a closed browser or a stopped app takes a moment to exit


def marked_processes(mark: str | None = None) -> dict[int, str]:
    """pid → command line of the running processes (other than this one) that carry this session's mark and are
    chromium, the app (``app.py``), or orphans (their parent is neither this process nor another marked one:
    nothing of the suite will end them)."""
    mark = SESSION_MARK.encode() + b"=" + (mark or os.environ[SESSION_MARK]).encode()
    marked = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if mark not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            state, ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:  # it ended meanwhile, or it is not ours to read
            continue
        if state != "Z":
            marked[int(proc.name)] = (int(ppid), command)
    owners = {os.getpid(), *marked}
    return {pid: command for pid, (ppid, command) in marked.items()
            if "chrom" in command or "app.py" in command or ppid not in owners}


def leftover_processes(grace_s: float = LEFTOVER_GRACE_S) -> dict[int, str]:
    """The marked chromium/app processes still running after waiting up to ``grace_s`` for them to exit."""
    deadline = time.monotonic() + grace_s
    while (found := marked_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


@pytest.hookimpl(trylast=True)  # after the session's fixtures were torn down
def pytest_sessionfinish(session):
    """Fail the run when a chromium, app or orphaned process that a test started is still running at its end."""
    if XDIST_WORKER or not Path("/proc").is_dir():  # a worker sees the other worker's browsers at work
        return
    left = leftover_processes()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    line = f"processes left running by the tests (chromium, app, orphans): {len(left)}"
    if reporter is not None:
        reporter.write_line(line, red=bool(left), green=not left)
    if left:
        if reporter is not None:
            for pid, command in sorted(left.items())[:20]:
                reporter.write_line(f"  {pid}: {command[:160]}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# `scripts/test.sh` runs the suite on two pytest-xdist workers, a module at a time each. Modules that use one shared
# outside resource run on the same worker, one after another: the Ray tests (a Ray head with 2 CPUs each) and the
# PostgreSQL tests (one database, emptied by each test); tests/test_suite_hygiene.py checks that every module with a
# test marked `ray` or `postgres` is listed here. The modules of long tests (`ray`, `slow`) are handed out first, so
# that neither worker is left with one of them at the end.
SHARED_RESOURCE_MODULES = {
    "ray": ("tests/browser/test_ray_browser.py", "tests/test_serve_app.py", "tests/test_serve_autoscale.py",
            "tests/test_serve_deployment.py"),
    "postgres": ("tests/test_annotation_group_commit.py", "tests/test_annotation_votes.py",
                 "tests/test_db_migrations.py", "tests/test_export.py"),
}
LONG_MARKS = ("ray", "slow")


def module_of(nodeid: str) -> str:
    """The test file of a test id (``tests/test_x.py::test_y[p]`` → ``tests/test_x.py``)."""
    return nodeid.split("::")[0]


def work_unit(nodeid: str) -> str:
    """What one xdist worker runs as a whole: the test's module, or the shared resource its module uses."""
    module = module_of(nodeid)
    return next((name for name, modules in SHARED_RESOURCE_MODULES.items() if module in modules), module)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Hand out whole work units (modules, or the modules of one shared resource) in collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False  # keep the collection order: long units first
    return ByWorkUnit(config, log)


def _long_units_first(items) -> None:
    """Put the work units that hold a long test (marked ``ray`` or ``slow``) first; the order inside a unit and
    among the others is kept."""
    long_units = {work_unit(item.nodeid) for item in items
                  if any(item.get_closest_marker(mark) for mark in LONG_MARKS)}
    items.sort(key=lambda item: work_unit(item.nodeid) not in long_units)


def pytest_collection_modifyitems(config, items):
    _long_units_first(items)
    _skip_gpu_tests(items)


def _skip_gpu_tests(items) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not keywords: they hold folder names too
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_pipe():
    """One tiny IdGlowPipeline shared by read-only tests (no face analyzer)."""
    from idglow.testing import tiny_pipeline

    return tiny_pipeline(seed=0)


@pytest.fixture(scope="session")
def sample_portraits(tmp_path_factory):
    """Portraits cropped from the group photo bundled with insightface (person1..6.jpg) + bundled portraits."""
    from idglow.faces.dlib_backend import DlibAnalyzer
    from idglow.samples import write_sample_portraits

    out = tmp_path_factory.mktemp("samples")
    paths = write_sample_portraits(out, DlibAnalyzer())
    return {p.stem: p for p in paths}


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """A folder of photos for `idglow data build-sft`: one portrait with a caption, one blank image, one note."""
    import numpy as np
    from PIL import Image

    skimage = pytest.importorskip("skimage")
    pytest.importorskip("dlib")
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    (folder / "astronaut.txt").write_text("a portrait of an adult in a white suit")
    Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8)).save(folder / "blank.png")
    (folder / "notes.md").write_text("not a photo")
    return folder


@pytest.fixture(scope="session")
def sft_folder(photos, tmp_path_factory):
    """The SFT set `idglow data build-sft` makes from ``photos``."""
    from idglow.cli import main as cli_main

    out = tmp_path_factory.mktemp("sft") / "set"
    assert cli_main(["data", "build-sft", "--photos", str(photos), "--out", str(out), "--min-faces", "1"]) == 0
    return out
