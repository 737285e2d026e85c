"""An ASGI middleware in front of Gradio's file and call routes.

- ``POST …/upload``: the paths Gradio answers are recorded as raw uploads (in the app's
  :class:`~annotation.privacy.uploads.UploadRegistry`), so that only they can be deleted as "processed
  uploads" and the sweeper removes them within minutes.
- ``GET|HEAD …/file=<url>`` (``https:``, ``http:``, ``//host``, ``data:``, encoded or not) and ``…/proxy=``: refused
  with 404 on every file route, so that the server never fetches anything on a visitor's behalf.
- ``GET|HEAD …/file=<path>`` inside the temporary area: a raw upload (original bytes, EXIF and GPS included)
  is never served back, and a file that is gone answers 404.
- ``GET|HEAD …/file=<path>`` of a private download (a researcher's export, :class:`PrivateDownloads`): served
  only to the browser and signed-in session that made it, until it expires; anyone else gets 404.
- Every page answer gives a browser without one an unguessable HttpOnly cookie (:data:`BROWSER_COOKIE`), which
  is what ties a private download to the browser that asked for it.
- ``POST …/queue/join``, ``…/call/<api>``, ``…/call/v2/<api>``, ``…/run/<api>`` and ``…/api/<api>``: each input
  (session-state inputs left out by a route included) is checked against its widget's own data shape and range
  before Gradio runs the call, so that malformed API input (a broken table, text where a number goes) gets a
  clear 422 answer naming the input, instead of a generic server error.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from pathlib import Path

from annotation.privacy.private_downloads import BROWSER_COOKIE, PrivateDownloads, browser_id
from annotation.privacy.uploads import UploadRegistry

logger = logging.getLogger(__name__)

NOT_FOUND = b"Not found: this file was deleted or has expired."


class TempAreaGuard:
    """Pure ASGI middleware (``Middleware(TempAreaGuard, registry=..., downloads=...)`` in FastAPI's
    ``middleware=``)."""

    def __init__(self, app, registry: UploadRegistry, downloads: PrivateDownloads):
        self.app = app
        self.registry = registry
        self.downloads = downloads

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "")
        if method == "POST" and path.rstrip("/").endswith("/upload"):
            return await self.app(scope, receive, self._recording(send))
        if method == "POST" and _is_event_route(path):
            body, receive = await _buffered(receive)
            problems = _input_problems(scope, path, body)
            if problems:
                return await _unprocessable(send, problems)
        if method in ("GET", "HEAD") and "/proxy=" in path:
            return await _not_found(send)
        target = _file_target(path) if method in ("GET", "HEAD") else None
        if target is not None and (is_url(target) or await self._refused(scope, target)):
            return await _not_found(send)
        if method == "GET" and browser_id(_cookies(scope)) is None:
            send = _with_browser_cookie(send, scope.get("scheme") == "https")
        return await self.app(scope, receive, send)

    async def _refused(self, scope, target: str) -> bool:
        from starlette.concurrency import run_in_threadpool

        if not target:
            return False
        try:
            if self.downloads.is_private(target):
                browser = browser_id(_cookies(scope))
                return not await run_in_threadpool(self.downloads.allows, target, browser)
            return self._hidden(target)
        except (ValueError, OSError):  # not a path this machine can name (a NUL byte, too long): Gradio refuses it
            return False

    def _hidden(self, target: str) -> bool:
        if not self.registry.covers(target):
            return False
        return self.registry.is_upload(target) or not Path(target).is_file()

    def _recording(self, send):
        """A ``send`` that holds the upload answer back until its paths are recorded."""
        state = {"status": 0, "body": []}

        async def recording_send(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                return await send(message)
            if message["type"] != "http.response.body" or state["status"] != 200:
                return await send(message)
            state["body"].append(message.get("body", b""))
            if message.get("more_body", False):
                return None
            self._record(b"".join(state["body"]))
            return await send({"type": "http.response.body", "body": b"".join(state["body"]), "more_body": False})

        return recording_send

    def _record(self, body: bytes) -> None:
        try:
            paths = json.loads(body)
        except ValueError:
            return
        if isinstance(paths, list):
            self.registry.add([p for p in paths if isinstance(p, str)])


async def _not_found(send) -> None:
    await send({"type": "http.response.start", "status": 404,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(NOT_FOUND)).encode())]})
    await send({"type": "http.response.body", "body": NOT_FOUND})


_SCHEME = re.compile(r"^\s*[a-z][a-z0-9+.\-]*:", re.IGNORECASE)


def is_url(target: str) -> bool:
    """Whether a file route's target names anything but a local path: any scheme (``https:``, ``http:``, ``data:``,
    ``file:``, ``ftp:``…), a network path (``//host``, ``\\\\host``), in any case, percent-encoded any number of
    times, or with control characters or backslashes hiding it."""
    from urllib.parse import unquote

    seen = target
    for _ in range(5):
        unquoted = unquote(seen)
        if unquoted == seen:
            break
        seen = unquoted
    cleaned = "".join(ch for ch in seen if ch >= " " and ch != "\x7f").replace("\\", "/").strip()
    return bool(_SCHEME.match(cleaned)) or cleaned.startswith("//") or "://" in cleaned


def _file_target(path: str) -> str | None:
    """The file a GET asks Gradio for (``…/file=<path>`` or the older ``…/gradio_api/file/<path>``), or None."""
    if "/file=" in path:
        return path.split("/file=", 1)[1]
    if "/gradio_api/file/" in path:
        return path.split("/gradio_api/file/", 1)[1]
    return None


def _cookies(scope) -> dict[str, str]:
    from http.cookies import SimpleCookie

    raw = b"; ".join(v for k, v in scope.get("headers", ()) if k == b"cookie").decode("latin-1")
    jar = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed cookie header counts as no cookie
        return {}
    return {k: m.value for k, m in jar.items()}


def _with_browser_cookie(send, secure: bool):
    """A ``send`` that gives the browser its id cookie (HttpOnly, same site only) with the answer."""
    cookie = f"{BROWSER_COOKIE}={secrets.token_urlsafe(32)}; Path=/; HttpOnly; SameSite=Strict"
    cookie += "; Secure" if secure else ""

    async def cookie_send(message):
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", []), (b"set-cookie", cookie.encode())]
            message = {**message, "headers": headers}
        return await send(message)

    return cookie_send


async def _buffered(receive):
    """The whole request body, and a ``receive`` that replays it to the app."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return b"", receive
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    return body, replaying(body, receive)


def replaying(body: bytes, receive):
    """A ``receive`` that hands the app ``body`` (already read from the client) once, then the client's next
    messages."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _is_event_route(path: str) -> bool:
    """A POST that runs an event: the queue, ``/call/<api>``, ``/call/v2/<api>``, ``/run/<api>``, ``/api/<api>``."""
    return any(part in path for part in ("/queue/join", "/call/", "/run/", "/api/"))


def _input_problems(scope, path: str, body: bytes) -> list[tuple[str, str]]:
    """(input name, what is wrong) for each input of the called event that does not have its widget's shape.
    An input is named by its keyword (``seed``, ``label_0``) where the event passes it by name, else by its
    widget's label. Every route that runs an event is checked alike."""
    try:
        payload = json.loads(body)
        blocks = scope["app"].get_blocks()
    except (ValueError, KeyError, AttributeError):
        return []
    if not isinstance(payload, dict):
        return []
    fn = _called_fn(blocks, path, payload)
    values = _event_values(fn, path, payload) if fn is not None else None
    if values is None:
        return []
    keywords = list(getattr(fn, "input_parameter_names", None) or [])
    keywords += [None] * (len(fn.inputs) - len(keywords))
    return [problem for component, keyword, value in zip(fn.inputs, keywords, values)
            if (problem := _named_problem(component, keyword, value)) is not None]


def _event_values(fn, path: str, payload: dict) -> list | None:
    """The value sent for each of the event's inputs (None for a session state the route leaves out), or None
    when the body does not name them in a way Gradio would accept."""
    if "/call/v2/" in path:
        names = list(getattr(fn, "input_parameter_names", None) or [])
        if len(names) != len(fn.inputs):
            return None
        return [payload.get(name, getattr(widget, "value", None)) for name, widget in zip(names, fn.inputs)]
    data = payload.get("data")
    if not isinstance(data, list):
        return None
    if len(data) == len(fn.inputs):
        return data
    shown = [k for k, widget in enumerate(fn.inputs) if not getattr(widget, "skip_api", False)]
    if len(data) != len(shown):
        return None
    values: list = [None] * len(fn.inputs)
    for k, value in zip(shown, data):
        values[k] = value
    return values


def _called_fn(blocks, path: str, payload: dict):
    fns = blocks.fns
    index = payload.get("fn_index")
    for route in ("/call/v2/", "/call/", "/run/", "/api/"):
        if route in path:
            name = path.rsplit(route, 1)[1].strip("/")
            return next((fn for fn in fns.values() if fn.api_name == name), None)
    return fns.get(index) if isinstance(index, int) else None


def _named_problem(component, keyword: str | None, value) -> tuple[str, str] | None:
    """The problem of one input, named by its keyword (with the widget's label in the message) or label."""
    label = getattr(component, "label", None) or type(component).__name__.lower()
    problem = _shape_problem(component, value)
    if problem is None:
        return None
    if keyword is None or keyword == label:
        return label, problem
    return keyword, f"{problem} (the “{label}” field)"


def _shape_problem(component, value) -> str | None:
    """What is wrong if ``value`` cannot be this component's input; None if it can (or is empty)."""
    import gradio as gr

    if value is None and isinstance(component, gr.Dataframe):
        return "no table was sent: send {\"headers\": [...], \"data\": [[...], ...]}"
    if value is None and isinstance(component, gr.Slider):
        return "no number was sent"
    if value is None or isinstance(component, gr.State):
        return None
    if isinstance(component, (gr.Number, gr.Slider)):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or not _is_number(value):
            return f"{_show(value)} is not a number"
        return _range_problem(component, value)
    if isinstance(component, gr.Checkbox):
        return None if isinstance(value, bool) else f"{_show(value)} is not true or false"
    if isinstance(component, gr.Textbox):
        return None if isinstance(value, str) else f"{_show(value)} is not text: send a string"
    if isinstance(component, (gr.Radio, gr.Dropdown)):
        return _choice_problem(component, value)
    return _model_problem(component, value)


def _choice_problem(component, value) -> str | None:
    """A Radio's or Dropdown's value must be one of its choices (a list of them for a multiselect Dropdown)."""
    choices = [c[1] if isinstance(c, (tuple, list)) else c for c in (component.choices or [])]
    shown = ", ".join(_show(c) for c in choices)
    if getattr(component, "multiselect", False):
        if not isinstance(value, list):
            return f"{_show(value)} is not a list: send a list of some of {shown}"
        values = value
    else:
        values = [value]
    if getattr(component, "allow_custom_value", False):
        return None
    for item in values:
        if isinstance(item, (list, dict, bool)) or item not in choices:
            return f"{_show(item)} is not one of {shown}"
    return None


def _model_problem(component, value) -> str | None:
    """Checked against the component's own data model (files, tables, images); None if it has none."""
    import gradio as gr
    from pydantic import ValidationError

    model = getattr(component, "data_model", None)
    if model is None:
        return None
    try:
        parsed = model.model_validate(value)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{_show(value)} does not fit{' at ' + where if where else ''}: {first.get('msg', 'invalid')}"
    if isinstance(component, gr.Dataframe):
        return _table_problem(parsed)
    return None


def _table_problem(table) -> str | None:
    width = len(table.headers)
    for k, row in enumerate(table.data, start=1):
        if width and len(row) != width:
            return f"row {k} has {len(row)} cells but the table has {width} columns ({', '.join(map(str, table.headers))})"
    return None


def _range_problem(component, value) -> str | None:
    """A number outside its widget's range (a slider's ends, a Number's minimum and maximum), or not finite."""
    import math

    number = float(value)
    low, high = getattr(component, "minimum", None), getattr(component, "maximum", None)
    if not math.isfinite(number):
        return f"{_show(value)} is not a finite number"
    if low is not None and number < low:
        return f"{_show(value)} is below the minimum {low:g}"
    if high is not None and number > high:
        return f"{_show(value)} is above the maximum {high:g}"
    return None


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


async def _unprocessable(send, problems: list[tuple[str, str]]) -> None:
    """422 in Gradio's validation format (gradio_client raises ``ValidationError`` listing the inputs)."""
    detail = [{"__type__": "validate", "is_valid": False, "parameter_name": name, "message": message}
              for name, message in problems]
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": 422,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
