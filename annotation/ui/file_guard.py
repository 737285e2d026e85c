"""An ASGI middleware in front of Gradio's file routes.

- ``POST …/upload``: the paths Gradio answers are recorded as raw uploads (:data:`annotation.privacy.UPLOADS`),
  so that only they can be deleted as "processed uploads" and the sweeper removes them within minutes.
- ``GET|HEAD …/file=<path>`` inside the temporary area: a raw upload (original bytes, EXIF and GPS included)
  is never served back, and a file that is gone answers 404.
"""

from __future__ import annotations

import json
import logging

from annotation.privacy import UPLOADS, UploadRegistry

logger = logging.getLogger(__name__)

NOT_FOUND = b"Not found: this file was deleted or has expired."


class TempAreaGuard:
    """Pure ASGI middleware (``Middleware(TempAreaGuard, registry=...)`` in FastAPI's ``middleware=``)."""

    def __init__(self, app, registry: UploadRegistry = UPLOADS):
        self.app = app
        self.registry = registry

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "")
        if method == "POST" and path.rstrip("/").endswith("/upload"):
            return await self.app(scope, receive, self._recording(send))
        if method in ("GET", "HEAD") and "/file=" in path:
            target = path.split("/file=", 1)[1]
            if self._hidden(target):
                return await _not_found(send)
        return await self.app(scope, receive, send)

    def _hidden(self, target: str) -> bool:
        from pathlib import Path

        if not target or "://" in target or not self.registry.covers(target):
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
