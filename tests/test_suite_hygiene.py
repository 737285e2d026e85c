"""The session-end check of tests/conftest.py finds the processes a test leaves running: chromium, the app, and
orphans (nothing of the suite would end them), and not the processes the suite still owns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SHARED_RESOURCE_MODULES, leftover_processes, marked_processes, module_of, work_unit

needs_proc = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")


def _gone(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


@needs_proc
def test_an_app_process_left_running_is_found_until_it_ends():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "app.py"])
    try:
        assert proc.pid in leftover_processes(grace_s=0.5)
    finally:
        proc.kill()
        proc.wait()
    assert proc.pid not in marked_processes()


@needs_proc
def test_a_child_the_suite_still_owns_is_not_counted_but_an_orphan_is():
    owned = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    out = subprocess.run(["bash", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True)
    orphan = int(out.stdout.strip())
    try:
        time.sleep(0.2)  # the orphan's shell has exited: its parent is now the system's
        found = marked_processes()
        assert owned.pid not in found, "a running child of the test session is still the suite's to end"
        assert orphan in found, "an orphan nobody will end is counted"
    finally:
        owned.kill()
        owned.wait()
        _gone(orphan)
    assert not {owned.pid, orphan} & set(leftover_processes(grace_s=2.0))


@needs_proc
def test_processes_of_another_session_are_not_counted():
    env = {**os.environ, "IDGLOW_TEST_SESSION": "another-session"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "app.py"], env=env)
    try:
        time.sleep(0.2)
        assert proc.pid not in marked_processes()
        assert proc.pid in marked_processes("another-session")
    finally:
        proc.kill()
        proc.wait()


def test_every_module_of_a_shared_resource_is_one_work_unit(request):
    """The Ray and the PostgreSQL modules must not run on two xdist workers at once: each module with a test marked
    `ray` or `postgres` is listed in SHARED_RESOURCE_MODULES, so it runs in that resource's work unit."""
    marked = {(mark, module_of(item.nodeid)) for item in request.session.items
              for mark in SHARED_RESOURCE_MODULES if item.get_closest_marker(mark)}
    if not marked:
        pytest.skip("no module of this run uses a shared resource (run it with the whole suite)")
    unlisted = sorted(f"{module} ({mark})" for mark, module in marked if work_unit(f"{module}::t") != mark)
    assert not unlisted, f"add these to SHARED_RESOURCE_MODULES in tests/conftest.py: {unlisted}"
