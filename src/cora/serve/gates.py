"""Checks a request passes before the app parses it: the API key (401) and the content type (415).

Pure ASGI middleware, inside :class:`~cora.serve.body_limit.BodyLimit` (which caps the bytes first)
and outside the app, so a request without the key is refused before its JSON is parsed or
validated, whatever its body, and a POST that is not JSON gets a 415 saying so rather than a
confusing 422 from the parser.

**API key** (optional: ``cora serve --api-key-file FILE``, or the environment variable
``CORA_API_KEY``). Every request but :data:`OPEN_PATHS` must carry ``Authorization: Bearer
<key>``; without it, or with another key, the answer is 401 with ``WWW-Authenticate: Bearer``.
The key is compared in constant time (``hmac.compare_digest`` of SHA-256 digests, which also
hides the key's length). Open: ``/health`` (load balancers and orchestrators probe it without
credentials; it tells only "ok" and the queue length) and the API description (``/openapi.json``,
``/docs``), which holds no data of the run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from cora.errors import CoraError, one_line

API_KEY_ENV = "CORA_API_KEY"
MIN_KEY_CHARS = 16  # shorter keys can be guessed; `python -c "import secrets; print(secrets.token_urlsafe(32))"`
OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect"})
JSON_TYPES = ("application/json",)


def read_api_key(key_file: str | Path | None, environ=None) -> tuple[str | None, str]:
    """(the key or None, where it came from): ``key_file`` if given, else ``$CORA_API_KEY`` if set
    and not empty, else no key (no authentication). One-line errors for an unusable key."""
    environ = os.environ if environ is None else environ
    if key_file is not None:
        path = Path(key_file)
        try:
            key, source = path.read_text(encoding="utf-8").strip(), f"--api-key-file {path}"
        except (OSError, UnicodeDecodeError) as e:
            raise CoraError(f"--api-key-file {path}: cannot read the key ({type(e).__name__}: {one_line(e)})") from None
    elif environ.get(API_KEY_ENV, "").strip():
        key, source = environ[API_KEY_ENV].strip(), f"${API_KEY_ENV}"
    else:
        return None, "none"
    if len(key) < MIN_KEY_CHARS:
        raise CoraError(f"{source}: the API key has {len(key)} characters; use at least {MIN_KEY_CHARS} "
                        '(e.g. python -c "import secrets; print(secrets.token_urlsafe(32))")')
    if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise CoraError(f"{source}: the API key must be printable ASCII without spaces (it travels in an HTTP header)")
    return key, source


async def send_error(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """``{"detail": detail}`` with ``status``, the shape of every error the service answers."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


class ApiKeyGate:
    def __init__(self, app: ASGIApp, key: str):
        self.app, self._digest = app, _digest(key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        scheme, _, token = (_header(scope, b"authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return await send_error(send, 401, "missing API key: send the header 'Authorization: Bearer <key>'",
                                    [(b"www-authenticate", b"Bearer")])
        if not hmac.compare_digest(_digest(token.strip()), self._digest):
            return await send_error(send, 401, "wrong API key", [(b"www-authenticate", b'Bearer error="invalid_token"')])
        return await self.app(scope, receive, send)


class JsonOnly:
    """A POST must say its body is JSON (``application/json``, parameters such as a charset allowed)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            given = _header(scope, b"content-type")
            media = (given or "").split(";", 1)[0].strip().lower()
            if media not in JSON_TYPES:
                got = f"'{one_line(given, limit=80)}'" if given else "none"
                return await send_error(send, 415, f"Content-Type must be application/json (got {got}); "
                                                   "with curl: -H 'content-type: application/json'")
        return await self.app(scope, receive, send)
