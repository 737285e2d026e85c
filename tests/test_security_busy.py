"""Busy answers and the per-visitor limit of the generator, through the Gradio API of the running app."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("gradio_client")

from gradio_client import Client, handle_file  # noqa: E402


class GatedPipeline:
    """The app's real pipeline, started only once ``gate`` is open: stands in for generations that take a
    while on the GPU."""

    def __init__(self, pipe, gate: threading.Event):
        self._pipe, self._gate = pipe, gate

    def __call__(self, *args, **kwargs):
        self._gate.wait(120)
        return self._pipe(*args, **kwargs)

    def __getattr__(self, name):
        if name.startswith("_"):  # copy.copy looks for __setstate__ before _pipe is set
            raise AttributeError(name)
        return getattr(self._pipe, name)


@pytest.fixture()
def gated(request, tmp_path):
    from app_fixtures import running_app

    gate = threading.Event()
    with running_app(tmp_path / "data", **request.param) as app:
        service = app.services.generation
        real = service.pipe
        service.pipe = GatedPipeline(real, gate)
        try:
            yield app, gate
        finally:
            gate.set()
            service.pipe = real


def _visitor(app, portrait) -> Client:
    client = Client(app.url, verbose=False, download_files=False)
    client.predict(files=[handle_file(str(portrait))], consent=True, api_name="/upload")
    return client


def _submit(client: Client, seed: int):
    return client.submit(task="fusion", consent=True, seed=seed, steps=2, num_images=1, size=64,
                         model_versions=["tiny-demo"], label_0="Ann", api_name="/generate")


def _wait_admitted(app, count: int) -> None:
    queue = app.services.generation.queue
    deadline = time.monotonic() + 60
    while queue.admitted < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queue.admitted == count


@pytest.mark.parametrize("gated", [dict(concurrency=1, max_queue=1)], indirect=True)
def test_a_full_generator_answers_busy_at_once(gated, sample_portraits):
    app, gate = gated
    first, second = _visitor(app, sample_portraits["person1"]), _visitor(app, sample_portraits["person2"])
    late = _visitor(app, sample_portraits["person3"])
    jobs = [_submit(first, 1), _submit(second, 2)]
    _wait_admitted(app, 2)  # one running (held), one waiting: the queue is full
    start = time.monotonic()
    refused = _submit(late, 3)
    with pytest.raises(Exception, match=r"busy .*try again in about \d+ (s|min)"):
        refused.result(timeout=1.0)  # a call waiting in Gradio's own queue would time out here instead
    assert time.monotonic() - start < 1.0
    gate.set()
    assert [len(job.result(timeout=120)[0]) for job in jobs] == [1, 1]


@pytest.mark.parametrize("gated", [dict(concurrency=1, max_queue=4, max_per_visitor=2)], indirect=True)
def test_one_visitor_may_have_two_generations_pending(gated, sample_portraits):
    app, gate = gated
    eager, other = _visitor(app, sample_portraits["person1"]), _visitor(app, sample_portraits["person2"])
    jobs = [_submit(eager, 1), _submit(eager, 2)]
    _wait_admitted(app, 2)
    with pytest.raises(Exception, match="You already have 2 generation"):
        _submit(eager, 3).result(timeout=5.0)
    another = _submit(other, 4)  # someone else still gets a place
    _wait_admitted(app, 3)
    gate.set()
    assert [len(job.result(timeout=120)[0]) for job in [*jobs, another]] == [1, 1, 1]
    assert len(_submit(eager, 5).result(timeout=120)[0]) == 1, "the limit counts pending generations only"


def test_a_reserved_place_is_used_by_the_slot_or_given_back():
    from annotation.generation.gpu_queue import GpuQueue, QueueFullError, TooManyPendingError

    queue = GpuQueue(concurrency=3, max_waiting=0, max_per_owner=1)  # three run at once: no slot blocks here
    with queue.reserved("ann"):
        assert queue.admitted == 1
        with queue.slot(owner="ann"):
            assert queue.admitted == 1, "the slot uses the reserved place"
            with pytest.raises(TooManyPendingError, match="at most 1 per visitor"):
                with queue.reserved("ann"):
                    pass
    assert queue.admitted == 0
    with queue.reserved("bob"):
        pass  # the request failed its checks: no slot
    assert queue.admitted == 0
    with queue.reserved("bob"), queue.reserved("cat"), queue.reserved("dan"):
        with pytest.raises(QueueFullError, match=r"busy \(3 requests running or waiting, the limit is 3\)"):
            with queue.reserved("eve"):
                pytest.fail("a refused request runs nothing")
    assert queue.admitted == 0


def test_a_burst_gets_exactly_as_many_places_as_the_queue_holds():
    """Reservation is atomic: twelve calls arriving together while each prepares for a while (building the request,
    reading the database) get exactly the queue's three places, never more."""
    from annotation.generation.gpu_queue import GpuQueue, QueueFullError

    queue = GpuQueue(concurrency=1, max_waiting=2, max_per_owner=None)
    start, outcomes = threading.Barrier(12), []

    def call(k: int) -> None:
        start.wait(10)
        try:
            with queue.reserved(f"v{k}"):
                time.sleep(0.3)  # preparing the request
                outcomes.append("admitted")
        except QueueFullError:
            outcomes.append("busy")

    threads = [threading.Thread(target=call, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes) == ["admitted"] * 3 + ["busy"] * 9 and queue.admitted == 0


@pytest.mark.parametrize("gated", [dict(concurrency=1, max_queue=8, max_per_visitor=2)], indirect=True)
def test_one_browser_with_many_sessions_may_have_two_generations_pending(gated, sample_portraits):
    """Five sessions (tabs) of one browser cookie share its limit; another browser still gets a place."""
    import secrets

    app, gate = gated
    cookie = {"Cookie": f"idglow_browser={secrets.token_urlsafe(32)}"}
    tabs = []
    for k in range(3):
        tab = Client(app.url, verbose=False, download_files=False, headers=cookie)
        tab.predict(files=[handle_file(str(sample_portraits[f"person{k + 1}"]))], consent=True, api_name="/upload")
        tabs.append(tab)
    jobs = [_submit(tabs[0], 1), _submit(tabs[1], 2)]
    _wait_admitted(app, 2)
    with pytest.raises(Exception, match="429 Too Many Requests|already have 2 generation"):
        _submit(tabs[2], 3).result(timeout=10.0)  # refused at the edge, before it joins Gradio's queue
    other = _visitor(app, sample_portraits["person4"])
    another = _submit(other, 4)
    _wait_admitted(app, 3)
    gate.set()
    assert [len(job.result(timeout=120)[0]) for job in [*jobs, another]] == [1, 1, 1]
    assert len(_submit(tabs[2], 5).result(timeout=120)[0]) == 1, "the limit counts pending generations only"
