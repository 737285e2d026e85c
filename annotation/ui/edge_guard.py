"""An ASGI middleware at the very edge of the app: what one request, and one client, may cost the server.

Everything here is decided before Gradio parses or keeps anything:

- **Body size.** A POST other than an upload may carry at most :attr:`EdgeLimits.max_body` bytes (sign-in, votes,
  generation requests are a few hundred bytes); a longer one — announced by ``Content-Length`` or found while
  reading — gets ``413`` at once, and is never handed on. Each text field inside it is capped too
  (:attr:`EdgeLimits.max_field`).
- **Uploads.** ``POST …/upload`` streams through (Gradio writes it to the temporary area) while its bytes and files
  are counted: more than :attr:`EdgeLimits.max_files` files, more than ``max_files × max_upload`` bytes, more than a
  client's byte budget per :attr:`EdgeLimits.budget_window_s`, or a temporary area already holding
  :attr:`EdgeLimits.max_temp_bytes` → ``413``; Gradio's own parser then deletes what it had written.
- **Calls per client.** A client — its browser cookie, its Gradio session, and its network address when it sends
  no cookie — may have at most :attr:`EdgeLimits.max_outstanding` calls queued or running across all events (the
  queue's events and the direct ``/run/`` and ``/api/`` routes together); one more gets ``429`` with a
  ``Retry-After``, so that one client cannot fill the queue that everybody shares.
- **Generations per browser.** One browser cookie may have at most :attr:`EdgeLimits.max_generations` generations
  queued or running, however many sessions (tabs) it opens; the generator's own queue bounds each session too.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

from annotation.privacy.private_downloads import browser_id
from annotation.ui.route_guard import replaying

logger = logging.getLogger(__name__)

KB = 1024
MB = 1024 * KB
GENERATE_API = "generate"  # the event whose calls are bounded per browser (``max_generations``)


@dataclass(frozen=True)
class EdgeLimits:
    """The bounds :class:`EdgeGuard` enforces (docs/privacy.md, "Limits against abuse")."""

    max_body: int = 32 * KB  # any POST but an upload
    max_field: int = 4 * KB  # characters of one text value inside such a POST
    max_upload: int = 20 * MB  # one file
    max_files: int = 6  # files in one upload request
    client_budget: int = 200 * MB  # upload bytes of one client per budget window
    budget_window_s: float = 600.0
    max_temp_bytes: int = 2048 * MB  # the whole temporary area
    max_outstanding: int = 8  # calls of one client queued or running at once
    max_generations: int = 2  # generations of one browser (cookie) queued or running, all its sessions together

    @classmethod
    def for_upload_mb(cls, max_upload_mb: int, max_per_visitor: int = 2) -> EdgeLimits:
        """The default limits with files of up to ``max_upload_mb`` MiB and ``max_per_visitor`` generations."""
        upload = max_upload_mb * MB
        return cls(max_upload=upload, client_budget=max(cls.client_budget, 10 * upload),
                   max_temp_bytes=max(cls.max_temp_bytes, 100 * upload), max_generations=max_per_visitor)


class EdgeGuard:
    """Pure ASGI middleware (``Middleware(EdgeGuard, limits=..., temp_dir=...)``), the outermost one."""

    def __init__(self, app, limits: EdgeLimits | None = None, temp_dir: str | os.PathLike[str] | None = None):
        self.app = app
        self.limits = limits or EdgeLimits()
        self.temp_dir = Path(temp_dir or os.environ.get("GRADIO_TEMP_DIR", "/nonexistent"))
        self.budgets = UploadBudgets(self.limits)
        self.direct = DirectCalls()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        keys = client_keys(scope)
        if path.rstrip("/").endswith("/upload"):
            return await self._upload(scope, receive, send, keys)
        declared = _content_length(scope)
        if declared is not None and declared > self.limits.max_body:
            return await refuse(send, 413, f"request body over {self.limits.max_body} bytes")
        body, complete = await _read_at_most(receive, self.limits.max_body)
        if not complete:
            return await refuse(send, 413, f"request body over {self.limits.max_body} bytes")
        if _longest_text(body) > self.limits.max_field:
            return await refuse(send, 413, f"a field over {self.limits.max_field} characters")
        keys = keys | _session_key(body)
        if _is_call(path) and self._outstanding(scope, keys) >= self.limits.max_outstanding:
            return await refuse(send, 429, "too many calls of yours are queued or running; wait for them",
                                retry_after=2)
        if _is_call(path) and self._other_tabs_full(scope, path, body, keys):
            return await refuse(send, 429, f"You already have {self.limits.max_generations} generation(s) running "
                                "or waiting in this browser; wait for one to finish", retry_after=5)
        replay = replaying(body, receive)
        if not _is_direct(path):
            return await self.app(scope, replay, send)
        with self.direct.running(keys):
            return await self.app(scope, replay, send)

    def _outstanding(self, scope, keys: frozenset[str]) -> int:
        """Calls of this client now queued or running in Gradio's queue plus those running on direct routes."""
        queued = 0
        try:
            events = list(scope["app"].get_blocks()._queue.event_ids_to_events.values())
        except (KeyError, AttributeError):
            events = []
        for event in events:
            if event_keys(event) & keys:
                queued += 1
        return queued + self.direct.count(keys)

    def _other_tabs_full(self, scope, path: str, body: bytes, keys: frozenset[str]) -> bool:
        """Whether this call is a generation of a browser whose sessions together already have the most
        generations queued or running, while its own session has fewer (a session's own limit is the
        generator queue's, answered in plain words there)."""
        from annotation.ui.route_guard import _called_fn

        browsers = {key for key in keys if key.startswith("browser:")}
        try:
            blocks = scope["app"].get_blocks()
            payload = json.loads(body)
            fn = _called_fn(blocks, path, payload) if isinstance(payload, dict) else None
            events = list(blocks._queue.event_ids_to_events.values())
        except (ValueError, KeyError, AttributeError):
            return False
        if not browsers or fn is None or fn.api_name != GENERATE_API:
            return False
        mine = [event_keys(event) for event in events
                if getattr(event.fn, "api_name", None) == GENERATE_API and event_keys(event) & browsers]
        sessions = {key for key in keys if key.startswith("session:")}
        own = sum(1 for event in mine if event & sessions)
        return len(mine) >= self.limits.max_generations and own < self.limits.max_generations

    async def _upload(self, scope, receive, send, keys: frozenset[str]):
        limit = self.limits.max_files * self.limits.max_upload + 64 * KB
        declared = _content_length(scope)
        problem = self._upload_problem(keys, declared or 0, limit)
        if problem:
            return await refuse(send, 413, problem)
        counter = UploadCounter(_boundary(scope), self.limits.max_files, limit, self.budgets, keys)
        return await self.app(scope, counter.counting(receive), send)

    def _upload_problem(self, keys: frozenset[str], declared: int, limit: int) -> str | None:
        if declared > limit:
            return f"upload over {limit} bytes ({self.limits.max_files} files of {self.limits.max_upload} bytes)"
        if self.budgets.left(keys) < max(declared, 1):
            return "you uploaded too much recently; try again in a few minutes"
        if temp_area_bytes(self.temp_dir) >= self.limits.max_temp_bytes:
            logger.warning("temporary area full (%d bytes): refusing uploads", self.limits.max_temp_bytes)
            return "the server's upload area is full; try again in a few minutes"
        return None


def client_keys(scope) -> frozenset[str]:
    """Who sends this request: its browser cookie, or its network address when it sends no cookie."""
    from annotation.ui.route_guard import _cookies

    browser = browser_id(_cookies(scope))
    if browser:
        return frozenset({f"browser:{browser}"})
    host = (scope.get("client") or ("unknown", 0))[0]
    return frozenset({f"address:{host}"})


def event_keys(event) -> frozenset[str]:
    """The client keys of one event in Gradio's queue (its session, and its request's cookie or address)."""
    keys = {f"session:{event.session_hash}"}
    request = getattr(event, "request", None)
    try:
        browser = browser_id(dict(request.cookies)) if request is not None else None
        host = request.client.host if request is not None and request.client else "unknown"
    except (AttributeError, KeyError, TypeError):
        return frozenset(keys)
    keys.add(f"browser:{browser}" if browser else f"address:{host}")
    return frozenset(keys)


def _session_key(body: bytes) -> frozenset[str]:
    try:
        payload = json.loads(body)
    except ValueError:
        return frozenset()
    session = payload.get("session_hash") if isinstance(payload, dict) else None
    return frozenset({f"session:{session}"}) if isinstance(session, str) and session else frozenset()


def _is_call(path: str) -> bool:
    return any(part in path for part in ("/queue/join", "/call/", "/run/", "/api/"))


def _is_direct(path: str) -> bool:
    """A route that runs the event in the request itself, outside the queue."""
    return "/run/" in path or "/api/" in path


class DirectCalls:
    """Calls now running on the direct routes, by client key."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running: dict[str, int] = defaultdict(int)

    def count(self, keys: frozenset[str]) -> int:
        """The most calls any of these keys has running."""
        with self._lock:
            return max((self._running.get(key, 0) for key in keys), default=0)

    def running(self, keys: frozenset[str]):
        """A context manager counting one call of these keys while it runs."""
        import contextlib

        @contextlib.contextmanager
        def counted():
            with self._lock:
                for key in keys:
                    self._running[key] += 1
            try:
                yield
            finally:
                with self._lock:
                    for key in keys:
                        self._running[key] -= 1
                        if self._running[key] <= 0:
                            del self._running[key]

        return counted()


class UploadBudgets:
    """Upload bytes per client key over a sliding window."""

    def __init__(self, limits: EdgeLimits, clock=time.monotonic):
        self.limits = limits
        self.clock = clock
        self._lock = threading.Lock()
        self._spent: dict[str, deque[tuple[float, int]]] = {}

    def left(self, keys: frozenset[str]) -> int:
        """Bytes these keys may still upload in the current window."""
        now = self.clock()
        with self._lock:
            return min(self.limits.client_budget - self._total(key, now) for key in keys)

    def spend(self, keys: frozenset[str], size: int) -> None:
        """Count ``size`` uploaded bytes against each key."""
        now = self.clock()
        with self._lock:
            for key in keys:
                self._spent.setdefault(key, deque()).append((now, size))
            if len(self._spent) > 10_000:  # forget idle clients
                for key in [k for k, q in self._spent.items() if not q or q[-1][0] < now - self.limits.budget_window_s]:
                    del self._spent[key]

    def _total(self, key: str, now: float) -> int:
        spent = self._spent.get(key)
        if not spent:
            return 0
        while spent and spent[0][0] < now - self.limits.budget_window_s:
            spent.popleft()
        return sum(size for _, size in spent)


class UploadCounter:
    """Counts an upload's bytes and files as Gradio reads them; past a bound, Gradio's reader gets a
    ``MultiPartException`` (Gradio then deletes the files it wrote and answers 413)."""

    def __init__(self, boundary: bytes, max_files: int, max_bytes: int, budgets: UploadBudgets,
                 keys: frozenset[str]):
        self.delimiter = b"--" + boundary if boundary else b""
        self.max_files, self.max_bytes = max_files, max_bytes
        self.budgets, self.keys = budgets, keys
        self.size, self.parts, self.tail = 0, 0, b""

    def counting(self, receive):
        """A ``receive`` that counts each chunk before handing it on."""

        async def counted():
            message = await receive()
            if message.get("type") == "http.request":
                self._count(message.get("body", b""))
            return message

        return counted

    def _count(self, chunk: bytes) -> None:
        from starlette.formparsers import MultiPartException

        self.size += len(chunk)
        self.budgets.spend(self.keys, len(chunk))
        if self.delimiter:
            window = self.tail + chunk
            self.parts += window.count(self.delimiter) - self.tail.count(self.delimiter)
            self.tail = window[-(len(self.delimiter) - 1):]
        if self.parts - 1 > self.max_files:  # the closing delimiter is counted too
            raise MultiPartException(f"too many files: at most {self.max_files} in one upload (the maximum "
                                     "allowed size)")
        if self.size > self.max_bytes:
            raise MultiPartException(f"upload exceeded the maximum allowed size of {self.max_bytes} bytes")
        if self.budgets.left(self.keys) < 0:
            raise MultiPartException("you uploaded too much recently: over the maximum allowed size per client")


_TEMP_SIZE: dict[str, tuple[float, int]] = {}


def temp_area_bytes(root: Path, max_age_s: float = 2.0) -> int:
    """Bytes in the temporary area (measured at most every ``max_age_s`` seconds)."""
    cached = _TEMP_SIZE.get(str(root))
    now = time.monotonic()
    if cached is not None and now - cached[0] < max_age_s:
        return cached[1]
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    _TEMP_SIZE[str(root)] = (now, total)
    return total


def _content_length(scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _boundary(scope) -> bytes:
    for key, value in scope.get("headers", ()):
        if key == b"content-type" and b"boundary=" in value:
            return value.split(b"boundary=", 1)[1].split(b";")[0].strip(b'"')
    return b""


async def _read_at_most(receive, limit: int) -> tuple[bytes, bool]:
    """The request body and True, or what was read and False as soon as it passes ``limit`` bytes."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", False
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks), True


def _longest_text(body: bytes) -> int:
    """Characters of the longest string (or key) anywhere in a JSON body; 0 if it is not JSON."""
    try:
        value = json.loads(body)
    except ValueError:
        return 0
    longest, todo = 0, [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            longest = max(longest, len(item))
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return longest


async def refuse(send, status: int, message: str, retry_after: int | None = None) -> None:
    """Answer ``status`` with ``{"detail": message}`` and nothing else."""
    body = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
