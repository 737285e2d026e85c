"""The app's dlib face analysis in a child process: same faces, a child that is replaced when it dies and ends
with its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from annotation.ui.wiring import FACES_KEPT_S, face_analyzer_for_the_server
from idglow.faces import DlibAnalyzer
from idglow.faces.match import analyzer_match_threshold
from idglow.faces.memo import RememberedFaces
from idglow.faces.process import AnalyzerProcess
from idglow.loading import ModelSettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served():
    analyzer = face_analyzer_for_the_server(ModelSettings())
    yield analyzer
    analyzer.close()


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_the_app_finds_the_same_faces_in_a_process_of_its_own(served, sample_portraits):
    assert isinstance(served, RememberedFaces) and isinstance(served.analyzer, AnalyzerProcess)
    assert served.max_age_s == FACES_KEPT_S == 15 * 60
    assert served.worker_pid != os.getpid()
    here = DlibAnalyzer()
    assert (served.embedding_dim, served.backend_name, served.estimates_age) == (128, "dlib", here.estimates_age)
    assert served.same_person_threshold == analyzer_match_threshold(here)
    for name in ("person1", "person2"):
        expected, found = here.detect(sample_portraits[name]), served.detect(sample_portraits[name])
        assert len(found) == len(expected) == 1
        assert np.allclose(found[0].bbox, expected[0].bbox) and found[0].age == expected[0].age
        assert np.allclose(found[0].embedding, expected[0].embedding, atol=1e-6)
    with pytest.raises(ValueError, match="empty image"):  # the child's errors reach the caller
        served.detect(np.zeros((0, 5, 3), dtype=np.uint8))


def test_a_child_that_dies_is_replaced(served, sample_portraits):
    before = served.worker_pid
    os.kill(before, signal.SIGKILL)
    assert _gone(before, 10)
    outcomes = []
    for _ in range(2):  # the call that meets the dead child may fail, with a clear message; the next one works
        try:
            outcomes.append(len(served.analyzer.detect(sample_portraits["person1"])))  # not the remembered faces
            break
        except RuntimeError as err:
            outcomes.append(str(err))
    assert outcomes[-1] == 1, outcomes
    assert all("face analysis stopped" in o for o in outcomes[:-1])
    assert served.worker_pid not in (before, os.getpid())


def test_the_child_ends_with_a_killed_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import functools, time
        from idglow.faces.process import AnalyzerProcess
        from idglow.loading import ModelSettings, load_face_analyzer

        if __name__ == "__main__":
            analyzer = AnalyzerProcess(functools.partial(load_face_analyzer, ModelSettings()))
            print(analyzer.worker_pid, flush=True)
            time.sleep(120)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        child = int(parent.stdout.readline())
        assert not _gone(child, 0.5)
    finally:
        parent.kill()
        parent.wait(30)
    assert _gone(child, 10)
