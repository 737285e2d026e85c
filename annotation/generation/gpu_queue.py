"""The generator's queue: a concurrency limit, a bounded wait list and a per-visitor limit, each refusing at once
(never queueing) with a message that says when to try again. A place taken for a page is given back when that
page closes (:meth:`GpuQueue.page_closed`): a waiting request leaves the wait list, a running one stops at its
next step (:func:`raise_if_left`)."""

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
from idglow.serving import GenerationCancelled

logger = logging.getLogger(__name__)

DEFAULT_JOB_SECONDS = 30.0  # the wait estimate before any generation has finished


class QueueFullError(IdGlowError):
    """The generator's wait list is full; the request was not queued."""


class TooManyPendingError(QueueFullError):
    """This visitor already has as many generations running or waiting as allowed."""


class VisitorLeftError(GenerationCancelled):
    """The page that asked for this generation was closed: the generation stopped and its place was freed."""


WAIT_POLL_S = 0.2  # how often a waiting request looks whether its page was closed


@dataclass
class _Reservation:
    """A place taken by :meth:`GpuQueue.reserved`, for the slot that the same call enters next."""

    queue: GpuQueue
    owner: str | None
    ahead: int
    left: threading.Event
    used: bool = False

    def fits(self, queue: GpuQueue, owner: str | None) -> bool:
        return not self.used and self.queue is queue and self.owner == owner


_RESERVED: ContextVar[_Reservation | None] = ContextVar("idglow_queue_reservation", default=None)
_LEFT: ContextVar[threading.Event | None] = ContextVar("idglow_queue_page_left", default=None)


def raise_if_left() -> None:
    """Raise :class:`VisitorLeftError` if the page of the place this call holds (a :meth:`GpuQueue.reserved`
    or :meth:`GpuQueue.slot` block of the same thread or task) was closed. Called at every generation step."""
    left = _LEFT.get()
    if left is not None and left.is_set():
        raise VisitorLeftError("the page that asked for this generation was closed; the generation was stopped")


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
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)  # notified when a place to run frees up
        self._running = 0
        self._admitted = 0  # running + waiting
        self._per_owner: dict[str, int] = {}
        self._pages: dict[str, set[threading.Event]] = {}  # page → the "page closed" flags of its places
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
    def reserved(self, owner: str | None = None, page: str | None = None):
        """Take a place for ``owner`` now, or refuse at once (:class:`QueueFullError`,
        :class:`TooManyPendingError`), before the caller does any costly work for the request. A :meth:`slot`
        entered for the same owner inside this block (same thread or task) uses that place instead of asking
        again; a place no slot used is given back when the block ends. ``page``: the page (e.g. the web
        session) the request came from; :meth:`page_closed` stops the request."""
        with self._lock:
            ahead = self._admit(owner)
        reservation = _Reservation(self, owner, ahead, self._watch(page))
        token, left_token = _RESERVED.set(reservation), _LEFT.set(reservation.left)
        try:
            yield
        finally:
            _RESERVED.reset(token)
            _LEFT.reset(left_token)
            self._forget(page, reservation.left)
            if not reservation.used:
                with self._lock:
                    self._release(owner, None)

    def page_closed(self, page: str) -> int:
        """Stop every request of ``page``: a waiting one leaves the wait list at once, a running one stops at its
        next step (:class:`VisitorLeftError`); their places are given back. Returns how many were stopped."""
        with self._lock:
            flags = list(self._pages.get(page, ()))
        for left in flags:
            left.set()
        if flags:
            logger.info("a page closed: %d generation(s) stopped", len(flags))
        return len(flags)

    def _watch(self, page: str | None) -> threading.Event:
        left = threading.Event()
        if page:
            with self._lock:
                self._pages.setdefault(page, set()).add(left)
        return left

    def _forget(self, page: str | None, left: threading.Event) -> None:
        if page:
            with self._lock:
                flags = self._pages.get(page, set())
                flags.discard(left)
                if not flags:
                    self._pages.pop(page, None)

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
    def slot(self, on_wait: Callable[[int], None] | None = None, owner: str | None = None,
             page: str | None = None):
        """Hold one generation place for the ``with`` body; ``on_wait(ahead)`` is called when it must wait. A
        place whose page closes while it waits is given back with :class:`VisitorLeftError`."""
        reservation = _RESERVED.get()
        with self._lock:
            reserved = reservation is not None and reservation.fits(self, owner)
            if reserved:
                reservation.used, ahead = True, reservation.ahead
            else:
                try:
                    ahead = self._admit(owner)
                except QueueFullError as err:
                    logger.info("generation refused: %s", type(err).__name__)
                    raise
            admitted = self._admitted
        left = reservation.left if reserved else self._watch(page)
        left_token = _LEFT.set(left)
        logger.debug("generation admitted: %d ahead, %d running or waiting of %d", ahead, admitted, self.capacity)
        seconds = None
        try:
            if ahead and on_wait is not None:
                on_wait(ahead)
            self._take_slot(left)
            try:
                started = self.clock()
                yield
                seconds = self.clock() - started
            finally:
                with self._lock:
                    self._running -= 1
                    self._freed.notify()
        finally:
            _LEFT.reset(left_token)
            self._forget(page, left)
            with self._lock:
                self._release(owner, seconds)
            logger.debug("generation done in %s s", "?" if seconds is None else f"{seconds:.1f}")

    def _take_slot(self, left: threading.Event) -> None:
        """Wait for a free generation place, unless the page closes first."""
        with self._lock:
            while self._running >= self.concurrency:
                if left.is_set():
                    raise VisitorLeftError("the page that asked for this generation was closed while it waited")
                self._freed.wait(WAIT_POLL_S)
            self._running += 1

    @property
    def running(self) -> int:
        """Generations running now."""
        return self._running

    def set_concurrency(self, concurrency: int) -> None:
        """Let ``concurrency`` generations run at once from now on (e.g. the generator's replicas running now).
        Fewer than before: running generations finish, and no waiting one starts until fewer run."""
        if concurrency < 1:
            raise InputError(f"queue needs concurrency >= 1, got {concurrency}")
        with self._lock:
            if concurrency != self.concurrency:
                logger.info("generations run at once: %d (was %d)", concurrency, self.concurrency)
            self.concurrency = concurrency
            self._freed.notify_all()


def _readable(seconds: float) -> str:
    if seconds < 90:
        return f"about {max(5, int(round(seconds / 5.0)) * 5)} s"
    return f"about {int(round(seconds / 60.0))} min"
