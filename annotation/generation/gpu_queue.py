"""The generator's queue: a concurrency limit, a bounded wait list and a per-visitor limit, each refusing at once
(never queueing) with a message that says when to try again."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from idglow.errors import IdGlowError, InputError

logger = logging.getLogger(__name__)

DEFAULT_JOB_SECONDS = 30.0  # the wait estimate before any generation has finished


class QueueFullError(IdGlowError):
    """The generator's wait list is full; the request was not queued."""


class TooManyPendingError(QueueFullError):
    """This visitor already has as many generations running or waiting as allowed."""


@dataclass
class _Reservation:
    """A place taken by :meth:`GpuQueue.reserved`, for the slot that the same call enters next."""

    queue: GpuQueue
    owner: str | None
    ahead: int
    used: bool = False

    def fits(self, queue: GpuQueue, owner: str | None) -> bool:
        return not self.used and self.queue is queue and self.owner == owner


_RESERVED: ContextVar[_Reservation | None] = ContextVar("idglow_queue_reservation", default=None)


class GpuQueue:
    """At most ``concurrency`` generations run at once and at most ``max_waiting`` wait; one visitor (``owner``)
    may have at most ``max_per_owner`` running or waiting. A request beyond any limit is refused immediately
    with :class:`QueueFullError` (:class:`TooManyPendingError` for the per-visitor limit)."""

    def __init__(self, concurrency: int = 1, max_waiting: int = 8, max_per_owner: int | None = 2,
                 clock: Callable[[], float] = time.monotonic):
        if concurrency < 1 or max_waiting < 0:
            raise InputError(f"queue needs concurrency >= 1 and max_waiting >= 0, got {concurrency}, {max_waiting}")
        if max_per_owner is not None and max_per_owner < 1:
            raise InputError(f"max_per_owner must be at least 1 (or None for no limit), got {max_per_owner}")
        self.concurrency = concurrency
        self.max_waiting = max_waiting
        self.max_per_owner = max_per_owner
        self.clock = clock
        self._slots = threading.Semaphore(concurrency)
        self._lock = threading.Lock()
        self._admitted = 0  # running + waiting
        self._per_owner: dict[str, int] = {}
        self._job_seconds = DEFAULT_JOB_SECONDS

    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def capacity(self) -> int:
        return self.concurrency + self.max_waiting

    def expected_wait_s(self) -> float:
        """Seconds until a place frees up, from the running average duration of a generation."""
        rounds = max(1, math.ceil((self._admitted - self.concurrency + 1) / self.concurrency))
        return rounds * self._job_seconds

    @contextmanager
    def reserved(self, owner: str | None = None):
        """Take a place for ``owner`` now, or refuse at once (:class:`QueueFullError`,
        :class:`TooManyPendingError`), before the caller does any costly work for the request. A :meth:`slot`
        entered for the same owner inside this block (same thread or task) uses that place instead of asking
        again; a place no slot used is given back when the block ends."""
        with self._lock:
            ahead = self._admit(owner)
        reservation = _Reservation(self, owner, ahead)
        token = _RESERVED.set(reservation)
        try:
            yield
        finally:
            _RESERVED.reset(token)
            if not reservation.used:
                with self._lock:
                    self._release(owner, None)

    def _refusal(self, owner: str | None) -> None:
        wait = _readable(self.expected_wait_s())
        if self._admitted >= self.capacity:
            raise QueueFullError(
                f"The generator is busy ({self._admitted} requests running or waiting, the limit is "
                f"{self.capacity}): try again in {wait}."
            )
        mine = self._per_owner.get(owner, 0) if owner else 0
        if owner and self.max_per_owner is not None and mine >= self.max_per_owner:
            raise TooManyPendingError(
                f"You already have {mine} generation(s) running or waiting (at most {self.max_per_owner} per "
                f"visitor): try again in {wait}, when one has finished."
            )

    def _admit(self, owner: str | None) -> int:
        """Count the request in (under the lock) or refuse it; returns how many are ahead of it."""
        self._refusal(owner)
        mine = self._per_owner.get(owner, 0) if owner else 0
        self._admitted += 1
        if owner:
            self._per_owner[owner] = mine + 1
        return max(0, self._admitted - self.concurrency)

    def _release(self, owner: str | None, seconds: float | None) -> None:
        self._admitted -= 1
        if owner:
            left = self._per_owner.get(owner, 1) - 1
            if left > 0:
                self._per_owner[owner] = left
            else:
                self._per_owner.pop(owner, None)
        if seconds is not None:
            self._job_seconds = 0.7 * self._job_seconds + 0.3 * seconds

    @contextmanager
    def slot(self, on_wait: Callable[[int], None] | None = None, owner: str | None = None):
        """Hold one generation place for the ``with`` body; ``on_wait(ahead)`` is called when it must wait."""
        reservation = _RESERVED.get()
        with self._lock:
            if reservation is not None and reservation.fits(self, owner):
                reservation.used, ahead = True, reservation.ahead
            else:
                try:
                    ahead = self._admit(owner)
                except QueueFullError as err:
                    logger.info("generation refused: %s", type(err).__name__)
                    raise
            admitted = self._admitted
        logger.debug("generation admitted: %d ahead, %d running or waiting of %d", ahead, admitted, self.capacity)
        seconds = None
        try:
            if ahead and on_wait is not None:
                on_wait(ahead)
            self._slots.acquire()
            try:
                started = self.clock()
                yield
                seconds = self.clock() - started
            finally:
                self._slots.release()
        finally:
            with self._lock:
                self._release(owner, seconds)
            logger.debug("generation done in %s s", "?" if seconds is None else f"{seconds:.1f}")


def _readable(seconds: float) -> str:
    if seconds < 90:
        return f"about {max(5, int(round(seconds / 5.0)) * 5)} s"
    return f"about {int(round(seconds / 60.0))} min"
