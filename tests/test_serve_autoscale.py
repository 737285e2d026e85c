"""The app in front of an autoscaled `idglow serve` (min 1, max 2 CPU replicas of the tiny model on a real local
Ray head): it admits as many generations at once as the deployment may run replicas, so that Serve's router
holds the one beyond the running replica, where Serve's autoscaler counts it."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest


class _Status:
    """A generator whose deployment status is given (or whose cluster does not answer: ``None``)."""

    def __init__(self, status: dict | None):
        self.answer = status

    def status(self, timeout_s: float) -> dict:
        from idglow.serving import GeneratorUnreachableError

        if self.answer is None:
            raise GeneratorUnreachableError("The Ray cluster at 127.0.0.1:1 is not reachable.")
        return self.answer


def test_generations_at_once_are_the_most_replicas_when_autoscaled_else_the_running_ones():
    from annotation.ui.wiring import generations_at_once

    fixed = {"replicas": {"RUNNING": 2, "STARTING": 1}, "max_replicas": None}
    assert generations_at_once(_Status(fixed), least=1) == 2  # a restarting replica is not counted
    assert generations_at_once(_Status(fixed), least=3) == 3  # --concurrency stays the floor
    scaled = {"replicas": {"RUNNING": 1}, "max_replicas": 4}
    assert generations_at_once(_Status(scaled), least=1) == 4
    assert generations_at_once(_Status({"replicas": {"RUNNING": 5}, "max_replicas": 4}), least=1) == 5
    assert generations_at_once(_Status({}), least=1) == 1  # nothing deployed
    assert generations_at_once(_Status(None), least=1, warn=False) is None


@pytest.fixture(scope="module")
def autoscaled():
    """A local Ray head with `idglow serve --replicas 1 --min-replicas 1 --max-replicas 2` deployed on it."""
    pytest.importorskip("ray.serve")
    from serve_cluster import LocalRayHead
    from test_serve_deployment import _idglow

    temp = Path(tempfile.mkdtemp(prefix="idgscale", dir="/tmp"))
    head = LocalRayHead(temp, num_cpus=2).start()
    try:
        out = _idglow("serve", "--ray-address", head.address, "--replicas", "1", "--min-replicas", "1",
                      "--max-replicas", "2")
        assert out.returncode == 0 and "1 RUNNING" in out.stdout, out.stdout + out.stderr
        yield head
    finally:
        head.stop()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.ray
def test_the_deployment_status_reports_the_most_replicas_of_an_autoscaled_deployment(autoscaled):
    from idglow.serving_process import GeneratorProcess

    generator = GeneratorProcess(autoscaled.address)
    try:
        status = generator.status(timeout_s=120)
        assert status["replicas"] == {"RUNNING": 1} and status["max_replicas"] == 2
    finally:
        generator.close()


def _generate(service, visitor: str, portrait, seed: int, results: list) -> None:
    """One long generation of ``visitor`` through the app's service; its seeds (or its error) go to ``results``."""
    from annotation.generation.request import GenerationRequest
    from idglow.images import decode_image
    from idglow.subjects import SubjectRef

    request = GenerationRequest(subjects=[SubjectRef(decode_image(portrait))], task="fusion", prompt="a portrait",
                                seed=seed, num_inference_steps=60, height=128, width=128,
                                model_versions=["tiny-demo"], visitor_id=visitor, consent=True)
    try:
        results.append(service.generate(request))
    except Exception as err:  # reported by the test, which then fails
        results.append(err)


def _wait_until(check, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.ray
def test_the_app_sends_serve_as_many_generations_as_it_may_run_replicas(autoscaled, tmp_path, sample_portraits):
    """With one replica running of at most two, two visitors' generations both leave the app's queue at once:
    the second waits in Serve's router (where the autoscaler counts it), not in the app, and both are served."""
    from app_fixtures import running_app

    from idglow.serving_process import GeneratorProcess

    observer = GeneratorProcess(autoscaled.address)
    try:
        with running_app(tmp_path / "data", generator="ray", ray_address=autoscaled.address) as app:
            service, results = app.services.generation, []
            assert observer.status(timeout_s=60)["replicas"] == {"RUNNING": 1}
            assert service.queue.concurrency == 2, "the app admits only the running replica's generation"
            visitors = [threading.Thread(target=_generate, args=(service, f"visitor-{i}", sample_portraits["person1"],
                                                                 10 * i, results)) for i in range(2)]
            for visitor in visitors:
                visitor.start()
            both_sent = _wait_until(lambda: service.queue.admitted == 2, 60)  # both run: concurrency is 2
            for visitor in visitors:
                visitor.join(600)
    finally:
        observer.close()
    assert both_sent, "the second generation waited in the app's queue instead of Serve's"
    assert len(results) == 2 and not [r for r in results if isinstance(r, Exception)], results
