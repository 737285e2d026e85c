"""The Ray generator's client in a process of its own, for long-running front ends such as the web app.

A process joined to a Ray cluster terminates itself about a minute after the cluster's head goes away (Ray's
core worker exits when it cannot reach the GCS). A web server must not go with it: :class:`GeneratorProcess`
keeps the :class:`~idglow.serving.RayGenerator` in a child process (``spawn``) and streams each call's events
back over a pipe, so the app itself never imports Ray. If the child ends, the calls it was serving fail with
:class:`~idglow.serving.GeneratorUnreachableError` and the next call starts a new child; a cluster that does not
answer is reported at once, before any child is asked.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from idglow.errors import IdGlowError, InputError
from idglow.serving import (
    DEFAULT_APP_NAME,
    GenerationCall,
    GenerationDone,
    GeneratorUnreachableError,
    StepEvent,
    check_reachable,
    output_of,
)

logger = logging.getLogger(__name__)

LOST_MESSAGE = "The connection to the generator's Ray cluster was lost; please try again in a minute."


def _portable(err: BaseException) -> BaseException:
    """``err`` if it is this project's error or a ValueError and survives pickling, else one that does."""
    import pickle

    if isinstance(err, (IdGlowError, ValueError)) and type(err).__module__.startswith(("idglow", "builtins")):
        try:
            pickle.loads(pickle.dumps(err))
            return err
        except Exception:  # an error with keyword-only arguments does not rebuild itself
            return InputError(str(err)) if isinstance(err, ValueError) else IdGlowError(str(err))
    return RuntimeError(f"{type(err).__name__}: {err}")


def _child_main(conn, address: str, name: str, connect_timeout_s: float, parent: int) -> None:
    """The child: one thread per call, each streaming its events to the parent; ``cancel`` closes a stream."""
    from idglow.serving import RayGenerator

    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    generator = RayGenerator(address, name, connect_timeout_s)
    send_lock, cancelled = threading.Lock(), set()

    def send(message) -> None:
        with send_lock:
            conn.send(message)

    def work(kind: str, call_id: int, call: GenerationCall | None) -> None:
        try:
            if kind in ("info", "status"):
                from idglow.serving import deployment_status

                answer = generator.info() if kind == "info" else deployment_status(generator.address, generator.name)
                send((kind, call_id, answer))
                return
            for event in generator.events(call):
                if call_id in cancelled:
                    break
                send(("event", call_id, event))
            send(("end", call_id, None))
        except BaseException as err:  # everything goes back to the caller, who decides
            send(("error", call_id, _portable(err)))
        finally:
            cancelled.discard(call_id)

    while True:
        try:
            kind, call_id, payload = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        if kind == "cancel":
            cancelled.add(call_id)
        else:
            threading.Thread(target=work, args=(kind, call_id, payload), daemon=True).start()


def _exit_with(parent: int) -> None:
    """End the child within a second of its parent, also when the parent was killed."""
    import time

    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


class GeneratorProcess:
    """A :class:`~idglow.serving.RayGenerator` for ``address``/``name`` run in a child process; the same
    ``run``/``events``/``info`` methods, safe to call from many threads at once."""

    def __init__(self, address: str, name: str = DEFAULT_APP_NAME, connect_timeout_s: float = 2.0):
        self.address = address
        self.name = name
        self.connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._pending: dict[int, queue.Queue] = {}
        self._process = None
        self._conn = None
        atexit.register(self.close)

    def _child(self):
        """The running child's connection, starting a child when there is none."""
        with self._lock:
            if self._process is None or not self._process.is_alive():
                ctx = multiprocessing.get_context("spawn")
                mine, theirs = ctx.Pipe()
                self._process = ctx.Process(target=_child_main, daemon=True, name="idglow-ray-client",
                                            args=(theirs, self.address, self.name, self.connect_timeout_s, os.getpid()))
                self._process.start()
                theirs.close()
                self._conn = mine
                threading.Thread(target=self._read, args=(mine,), daemon=True, name="idglow-ray-reader").start()
                logger.info("started the Ray client process (pid %s) for %s", self._process.pid, self.address)
            return self._conn

    def _read(self, conn) -> None:
        """Hand each message of the child to its call; when the child ends, fail the calls it was serving."""
        while True:
            try:
                kind, call_id, payload = conn.recv()
            except (EOFError, OSError):
                break
            waiting = self._pending.get(call_id)
            if waiting is not None:
                waiting.put((kind, payload))
        with self._lock:
            if self._conn is conn:
                self._conn = None
                self._process = None
        for waiting in list(self._pending.values()):
            waiting.put(("error", GeneratorUnreachableError(LOST_MESSAGE)))

    def _send(self, kind: str, payload: Any) -> tuple[int, queue.Queue]:
        check_reachable(self.address, self.connect_timeout_s)  # a gone cluster answers at once
        call_id, answers = next(self._ids), queue.Queue()
        self._pending[call_id] = answers
        try:
            conn = self._child()
            with self._lock:
                conn.send((kind, call_id, payload))
        except (OSError, ValueError) as err:
            self._pending.pop(call_id, None)
            raise GeneratorUnreachableError(LOST_MESSAGE) from err
        return call_id, answers

    def info(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """The answering replica's description (see :meth:`idglow.serving.IdGlowGenerator.info`)."""
        return self._ask("info", timeout_s)

    def status(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """The deployment's status (see :func:`idglow.serving.deployment_status`)."""
        return self._ask("status", timeout_s)

    def _ask(self, kind: str, timeout_s: float) -> dict[str, Any]:
        call_id, answers = self._send(kind, None)
        try:
            kind, payload = answers.get(timeout=timeout_s)
        except queue.Empty:
            raise GeneratorUnreachableError(f"The generator at {self.address} did not answer in {timeout_s:g} s.") from None
        finally:
            self._pending.pop(call_id, None)
        if kind == "error":
            raise payload
        return payload

    def events(self, call: GenerationCall) -> Iterator[StepEvent | GenerationDone]:
        """StepEvents, then GenerationDone; closing the iterator early cancels the call."""
        call_id, answers = self._send("run", call)
        finished = False
        try:
            while True:
                kind, payload = answers.get()
                if kind == "event":
                    yield payload
                    continue
                finished = True
                if kind == "error":
                    raise payload
                return
        finally:
            self._pending.pop(call_id, None)
            if not finished:
                self._cancel(call_id)

    def _cancel(self, call_id: int) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.send(("cancel", call_id, None))
                except (OSError, ValueError):
                    pass

    def run(self, call: GenerationCall, on_step: Callable[[int, int], None] | None = None) -> Any:
        """Run ``call`` and return its IdGlowOutput; ``on_step(done, total)`` per step; an ``on_step`` that
        raises cancels the call."""
        return output_of(self.events(call), on_step)

    def close(self) -> None:
        """Stop the child process (it also ends by itself when this process ends)."""
        with self._lock:
            process, self._process, self._conn = self._process, None, None
        if process is not None and process.is_alive():
            process.terminate()
            process.join(5)
