"""The generator's queue: a concurrency limit and a bounded wait list that refuses at once when full."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import contextmanager

from idglow.errors import IdGlowError, InputError


class QueueFullError(IdGlowError):
    """The generator's wait list is full; the request was not queued."""


class GpuQueue:
    """At most ``concurrency`` generations run at once and at most ``max_waiting`` wait; a request beyond
    that is refused immediately with :class:`QueueFullError`."""

    def __init__(self, concurrency: int = 1, max_waiting: int = 8):
        if concurrency < 1 or max_waiting < 0:
            raise InputError(f"queue needs concurrency >= 1 and max_waiting >= 0, got {concurrency}, {max_waiting}")
        self.concurrency = concurrency
        self.max_waiting = max_waiting
        self._slots = threading.Semaphore(concurrency)
        self._lock = threading.Lock()
        self._admitted = 0  # running + waiting

    @property
    def admitted(self) -> int:
        return self._admitted

    @contextmanager
    def slot(self, on_wait: Callable[[int], None] | None = None):
        with self._lock:
            if self._admitted >= self.concurrency + self.max_waiting:
                raise QueueFullError(
                    f"the generator is busy ({self._admitted} requests running or waiting, the limit is "
                    f"{self.concurrency + self.max_waiting}); please try again in a minute"
                )
            self._admitted += 1
            ahead = max(0, self._admitted - self.concurrency)
        try:
            if ahead and on_wait is not None:
                on_wait(ahead)
            self._slots.acquire()
            try:
                yield
            finally:
                self._slots.release()
        finally:
            with self._lock:
                self._admitted -= 1
