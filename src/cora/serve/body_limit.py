"""A cap on request body size: 413 with a JSON message before the app parses anything.

Pure ASGI middleware, outermost in the app. A ``Content-Length`` over the cap is refused before
a byte of the body is read; otherwise the body is read in chunks and refused as soon as the bytes
so far pass the cap (a chunked upload declares no length), so a client can never make the server
hold more than ``max_bytes`` of one request. A body within the cap is handed to the app as one
message. (Starlette's own limiter answers 413 in plain text on some paths; clients of this
service get ``{"detail": ...}`` for every error.)
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cora.serve.gates import send_error


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            return await self._too_large(send, declared)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left: nobody to answer
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                return await self._too_large(send, None)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: whatever the server says next (a disconnect)

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, declared: int | None) -> None:
        size = f"of {declared:,} bytes " if declared is not None else ""
        # The unread rest of the body makes the connection unusable for another request: close it.
        await send_error(send, 413, f"request body {size}exceeds the limit of {self.max_bytes:,} bytes",
                         [(b"connection", b"close")])


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server's HTTP parser rejects such a request before the app sees it
    return None
