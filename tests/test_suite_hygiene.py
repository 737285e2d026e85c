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
from conftest import leftover_processes, marked_processes

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")


def _gone(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def test_an_app_process_left_running_is_found_until_it_ends():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "app.py"])
    try:
        assert proc.pid in leftover_processes(grace_s=0.5)
    finally:
        proc.kill()
        proc.wait()
    assert proc.pid not in marked_processes()


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
