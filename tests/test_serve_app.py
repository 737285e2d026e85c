"""The app as a front end of `idglow serve` (2 CPU replicas of the tiny model on a real local Ray head), through
the Gradio API: the same stored results as the local generator, progress, a killed replica, a stopped cluster.

This test process never joins the Ray cluster (the app's client runs in a process of its own), so stopping the
cluster at the end cannot end it."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("gradio_client")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

pytestmark = pytest.mark.ray

PASSWORD = "correct-horse-battery"
USERS = {"anna": (PASSWORD, "annotator")}


@pytest.fixture(scope="module")
def cluster():
    """A local Ray head with `idglow serve --replicas 2` deployed on it."""
    from serve_cluster import LocalRayHead
    from test_serve_deployment import _idglow

    temp = Path(tempfile.mkdtemp(prefix="idgray", dir="/tmp"))
    head = LocalRayHead(temp, num_cpus=2).start()
    try:
        out = _idglow("serve", "--ray-address", head.address, "--replicas", "2")
        assert out.returncode == 0 and "2 RUNNING" in out.stdout, out.stdout + out.stderr
        yield head
    finally:
        head.stop()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """The adapter folder of the model version tiny-v2."""
    from idglow.testing import tiny_adapter, tiny_pipeline

    folder = tmp_path_factory.mktemp("versions") / "v2"
    tiny_adapter(tiny_pipeline().transformer, seed=5).save_pretrained(folder)
    return folder


def _data_with_v2(data_dir: Path, adapter_dir: Path) -> Path:
    """A data folder whose store has the model version tiny-v2 before the app starts (the Generate tab lists
    the versions it finds at start)."""
    from annotation.store.candidates import register_model_version
    from annotation.store.database import make_store

    store = make_store(data_dir)
    with store.sessions() as session:
        register_model_version(session, "tiny-v2", adapter_dir)
    store.engine.dispose()
    return data_dir


def _generate_both_versions(app, portraits):
    gallery, scores, seed_text, *_ = _visitor(app, portraits).predict(
        **_generate_args(seed=7, versions=("tiny-demo", "tiny-v2")))
    return (len(gallery), scores["data"], seed_text), _stored(app)


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, adapter_dir, sample_portraits):
    """What the app with the local generator shows and stores for the request of the first test (served before
    the ray app starts: an app's temporary area is set for the whole process)."""
    from app_fixtures import running_app

    with running_app(_data_with_v2(tmp_path_factory.mktemp("local"), adapter_dir), users=USERS) as local:
        return _generate_both_versions(local, sample_portraits)


@pytest.fixture(scope="module")
def served(cluster, local_reference, tmp_path_factory, adapter_dir):
    """The app with the ray generator, with the model version tiny-v2."""
    from app_fixtures import running_app

    with running_app(_data_with_v2(tmp_path_factory.mktemp("ray"), adapter_dir), users=USERS, generator="ray",
                     ray_address=cluster.address) as app:
        yield app


def _visitor(app, portraits) -> Client:
    client = Client(app.url, verbose=False, download_files=False)
    client.predict(files=[handle_file(str(portraits["person1"])), handle_file(str(portraits["person2"]))],
                   consent=True, api_name="/upload")
    return client


def _generate_args(seed: int, steps: int = 3, versions=("tiny-demo",), size: int = 64) -> dict:
    return dict(task="fusion", scene="a picnic in a park", consent=True, seed=seed, steps=steps, num_images=2,
                size=size, model_versions=list(versions), label_0="Ann", label_1="Bob", api_name="/generate")


def _stored(app) -> list[tuple]:
    """Every stored candidate: version, seed, image hash, metrics, face matches, generation parameters."""
    from sqlalchemy import select

    from db.models import Candidate, Generation, ModelVersion

    with app.services.generation.sessions() as session:
        rows = session.execute(select(ModelVersion.name, Candidate.seed, Candidate.image_sha256,
                                      Candidate.metrics, Candidate.face_matches, Generation.params)
                               .join(Candidate.generation).join(Generation.model_version)
                               .order_by(Candidate.id)).all()
    return [tuple(r) for r in rows]


def _votes(app) -> int:
    from sqlalchemy import func, select

    from db.models import Vote

    with app.services.generation.sessions() as session:
        return session.scalar(select(func.count(Vote.id)))


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        pid = _parent(pid)
    return False


def _replica_pids(head) -> list[int]:
    """The pids of the generator's replicas: processes under the head titled as Serve replicas."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            pid = int(cmdline.parent.name)
            if "ServeReplica" in title and "IdGlowGenerator" in title and _descends_from(pid, head.process.pid):
                pids.append(pid)
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _busy_replica(head, timeout_s: float = 120, every_s: float = 0.2) -> int:
    """The pid of the replica that is generating (the one burning CPU), looked at every ``every_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = {pid: _cpu_ticks(pid) for pid in _replica_pids(head)}
        time.sleep(every_s)
        used = sorted(((_cpu_ticks(pid) - ticks, pid) for pid, ticks in before.items()), reverse=True)
        if len(used) == 2 and used[0][0] >= 2 and used[1][0] * 3 <= used[0][0]:  # one works, the other idles
            return used[0][1]
    raise AssertionError(f"no replica started generating (replicas: {_replica_pids(head)})")


def test_the_ray_generator_stores_what_the_local_one_stores_for_every_model_version(served, local_reference,
                                                                                   sample_portraits):
    shown, stored = _generate_both_versions(served, sample_portraits)
    assert shown == local_reference[0] and shown[0] == 4
    assert stored == local_reference[1] and len(stored) == 4
    assert [r[1] for r in stored] == [7, 8, 7, 8] and [r[0] for r in stored] == ["tiny-demo"] * 2 + ["tiny-v2"] * 2
    assert stored[0][2] != stored[2][2], "the model version's own adapter was not used"


def test_progress_arrives_step_by_step_from_the_replica(served, sample_portraits):
    from annotation.generation.request import GenerationRequest
    from idglow.images import decode_image
    from idglow.subjects import SubjectRef

    service = served.services.generation
    steps = []
    request = GenerationRequest(subjects=[SubjectRef(decode_image(sample_portraits["person1"]))], task="fusion",
                                prompt="a portrait", seed=3, num_inference_steps=4, height=64, width=64,
                                model_versions=["tiny-demo"], visitor_id="progress", consent=True)
    service.generate(request, on_step=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]


def _wait_until(check, timeout_s: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False


def test_the_app_runs_as_many_generations_at_once_as_replicas_run(served, cluster):
    """The deployment scaled to one replica and back to two: the number of generations the app lets run at once
    (and the wait list's limit above it) follows within a few polls."""
    from test_serve_deployment import _idglow

    queue = served.services.generation.queue
    assert queue.concurrency == 2 and queue.capacity == 2 + queue.max_waiting
    for replicas in (1, 2):
        out = _idglow("serve", "--ray-address", cluster.address, "--replicas", str(replicas))
        assert out.returncode == 0 and f"{replicas} RUNNING" in out.stdout, out.stdout + out.stderr
        assert _wait_until(lambda n=replicas: queue.concurrency == n), f"concurrency {queue.concurrency} != {replicas}"
        assert queue.capacity == replicas + queue.max_waiting


def _vote_until(app, stop: threading.Event, outcomes: list[str]) -> None:
    annotator = Client(app.url, verbose=False, download_files=False)
    annotator.predict("anna", PASSWORD, api_name="/sign_in")
    while not stop.is_set() and len(outcomes) < 20:
        if annotator.predict(api_name="/annotate_show")[1] is None:  # no pair left to vote on
            break
        after = annotator.predict("left", "clear", None, None, None, None, None, None, None, None, api_name="/vote")
        outcomes.append("saved" if "Vote saved" in after[4] else after[4])


def test_a_killed_replica_ends_its_request_plainly_and_nothing_else(served, cluster, sample_portraits, caplog):
    app = served
    pool_visitor = _visitor(app, sample_portraits)
    pool_visitor.predict(**_generate_args(seed=20, versions=("tiny-demo", "tiny-v2")))
    assert "added to the annotation pool" in pool_visitor.predict(api_name="/add_to_pool")
    votes_before, stop, outcomes = _votes(app), threading.Event(), []
    voter = threading.Thread(target=_vote_until, args=(app, stop, outcomes))
    voter.start()

    visitor = _visitor(app, sample_portraits)
    for attempt in range(3):  # the replica is frozen while its generation still runs (a fast one may end first)
        job = visitor.submit(**_generate_args(seed=30 + attempt, steps=60, size=128))  # the longest allowed
        victim = _busy_replica(cluster)
        os.kill(victim, signal.SIGSTOP)
        if not job.done():
            break
        os.kill(victim, signal.SIGCONT)
    else:
        raise AssertionError("every generation ended before its replica could be stopped")
    signal_sent = time.monotonic()

    with caplog.at_level("WARNING", logger="annotation.generation.service"):
        os.kill(victim, signal.SIGKILL)
        try:
            job.result(timeout=180)
            retried = True  # killed before its first step: asked once more, on the other replica
        except AppError as err:
            assert "generator stopped during your generation, please try again" in str(err)
            retried = False
    assert time.monotonic() - signal_sent < 120
    assert retried == any("trying once more" in r.getMessage() for r in caplog.records)
    stop.set()
    voter.join(120)
    assert app.services.generation.queue.admitted == 0, "a queue place was left taken"
    gallery, *_ = visitor.predict(**_generate_args(seed=40))  # the same visitor, the other replica
    assert len(gallery) == 2
    assert outcomes and set(outcomes) == {"saved"} and _votes(app) == votes_before + len(outcomes)


def test_a_stopped_cluster_is_answered_at_once_and_annotation_goes_on(served, cluster, sample_portraits):
    app = served
    visitor = _visitor(app, sample_portraits)
    visitor.predict(**_generate_args(seed=41, versions=("tiny-demo", "tiny-v2")))
    assert "added to the annotation pool" in visitor.predict(api_name="/add_to_pool")  # pairs to vote on
    cluster.stop()
    start = time.monotonic()
    with pytest.raises(AppError, match="not reachable"):
        visitor.predict(**_generate_args(seed=40))
    assert time.monotonic() - start < 5
    assert app.services.generation.queue.admitted == 0
    before = _votes(app)
    annotator = Client(app.url, verbose=False, download_files=False)
    annotator.predict("anna", PASSWORD, api_name="/sign_in")
    annotator.predict(api_name="/annotate_show")
    after = annotator.predict("left", "clear", None, None, None, None, None, None, None, None, api_name="/vote")
    assert "Vote saved" in after[4] and _votes(app) == before + 1
