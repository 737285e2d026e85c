"""The generator queue's page and concurrency controls: a closed page stops its running generation at the next
step and takes its waiting request off the wait list; the number of generations run at once can change while
the app runs (it follows the generator's replicas)."""

from __future__ import annotations

import threading
import time

import pytest

from annotation.generation.gpu_queue import GpuQueue, VisitorLeftError, raise_if_left


def _run(queue: GpuQueue, owner: str, page: str | None, started: threading.Event, steps: list, outcome: list,
         release: threading.Event | None = None, total: int = 200) -> None:
    """A generation of ``total`` steps (a step every 10 ms) that checks its page at every step, as the app's
    step callback does."""
    try:
        with queue.reserved(owner, page=page), queue.slot(owner=owner):
            started.set()
            for _ in range(total):
                raise_if_left()
                steps.append(1)
                if release is not None and release.is_set():
                    break
                time.sleep(0.01)
        outcome.append("done")
    except VisitorLeftError:
        outcome.append("left")


def _start(*args, **kwargs) -> threading.Thread:
    thread = threading.Thread(target=_run, args=args, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


def test_a_closed_page_stops_its_running_generation_and_frees_the_place():
    queue = GpuQueue(concurrency=1, max_waiting=2)
    started, steps, outcome = threading.Event(), [], []
    worker = _start(queue, "v1", "page-1", started, steps, outcome)
    assert started.wait(5)
    time.sleep(0.1)
    assert queue.page_closed("page-other") == 0  # another page closing stops nothing
    assert queue.page_closed("page-1") == 1
    worker.join(5)
    assert outcome == ["left"] and len(steps) < 100
    assert queue.admitted == 0 and queue.running == 0


def test_an_open_page_runs_to_the_end():
    queue = GpuQueue(concurrency=1, max_waiting=2)
    started, steps, outcome = threading.Event(), [], []
    _start(queue, "v1", "page-1", started, steps, outcome, total=20).join(10)
    assert outcome == ["done"] and len(steps) == 20 and queue.admitted == 0


def test_a_closed_page_leaves_the_wait_list_at_once():
    queue = GpuQueue(concurrency=1, max_waiting=2)
    release = threading.Event()
    first = [threading.Event(), [], []]
    runner = _start(queue, "v1", "page-1", *first, release=release)
    assert first[0].wait(5)
    waiting = [threading.Event(), [], []]
    waiter = _start(queue, "v2", "page-2", *waiting)
    deadline = time.monotonic() + 5
    while queue.admitted < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert queue.admitted == 2 and not waiting[0].is_set()
    closed = time.monotonic()
    assert queue.page_closed("page-2") == 1
    waiter.join(5)
    assert time.monotonic() - closed < 1.0
    assert waiting[2] == ["left"] and waiting[1] == [] and queue.admitted == 1
    release.set()
    runner.join(5)
    assert first[2] == ["done"] and queue.admitted == 0


def _hold(queue: GpuQueue, n: int, release: threading.Event) -> tuple[list[threading.Thread], list[threading.Event]]:
    started = [threading.Event() for _ in range(n)]
    threads = [_start(queue, f"v{i}", None, started[i], [], [], release=release) for i in range(n)]
    return threads, started


def test_concurrency_changes_while_running():
    queue = GpuQueue(concurrency=1, max_waiting=8, max_per_owner=None)
    release = threading.Event()
    threads, started = _hold(queue, 3, release)
    time.sleep(0.5)
    assert sum(s.is_set() for s in started) == 1 and queue.running == 1
    queue.set_concurrency(3)
    deadline = time.monotonic() + 2
    while queue.running < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert queue.running == 3 and all(s.is_set() for s in started)
    assert queue.capacity == 3 + 8
    queue.set_concurrency(1)  # running ones finish; the next waits until fewer than one run
    more, more_started = _hold(queue, 1, threading.Event())
    time.sleep(0.5)
    assert not more_started[0].is_set() and queue.running == 3
    release.set()
    for t in threads:
        t.join(5)
    assert more_started[0].wait(5)
    with pytest.raises(Exception, match="concurrency >= 1"):
        queue.set_concurrency(0)
