"""Running the app under uvicorn with a graceful, bounded shutdown (``cora serve``).

On SIGTERM (or a first Ctrl-C) uvicorn stops listening, closes idle connections, waits for the
requests in flight and only then runs the app's lifespan shutdown. A request in flight here is
usually one waiting in the batcher's queue, and a full queue can hold minutes of forward passes,
so waiting for all of them unbounded could stall a shutdown, and cutting them off at uvicorn's
timeout would answer 500s. :class:`GracefulServer` therefore starts the batcher's drain the moment
the shutdown begins: new requests get 503 at once, queued ones are scored for up to ``grace_s``
seconds and the rest get 503 (with a message), so every client is answered and the process exits
a little after ``grace_s`` plus the forward pass that was running. uvicorn's own timeout stays as
a backstop ``BACKSTOP_S`` later, for connections that hang for other reasons (a client that
stops sending its body).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import threading
import time

import uvicorn
from fastapi import FastAPI

from cora.errors import CoraError
from cora.serve.batcher import MicroBatcher

BACKSTOP_S = 10.0
# uvicorn closes a keep-alive connection idle for 5 s by default, the same idle time after which
# httpx's pool drops one: a client that reuses a connection right at 5 s (a loaded machine) sends
# its request as the server closes, and gets a connection reset for a POST it cannot safely
# resend (seen once in ~8,000 requests of the mixed load benchmark on a busy 2-core machine).
# Keeping idle connections longer than clients do leaves closing them to the client, which knows
# when it is about to send (75 s, nginx's default).
KEEP_ALIVE_S = 75.0


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, batcher: MicroBatcher, grace_s: float):
        super().__init__(config)
        self.batcher, self.grace_s = batcher, grace_s

    async def shutdown(self, sockets=None) -> None:
        self.batcher.close()  # before uvicorn's first await: from here on a new request is a 503
        drain = asyncio.create_task(self.batcher.drain(self.grace_s), name="cora-drain")
        try:
            await super().shutdown(sockets)
        finally:
            if not drain.done():  # the lifespan shutdown has rejected what was left
                drain.cancel()


def check_serve_flags(max_pairs: int, max_body_bytes: int, shutdown_grace: float, max_candidates: int = 1000,
                      request_timeout: float = 120.0) -> None:
    """``cora serve``'s limits, checked before the model loads (one line naming the flag)."""
    for flag, value in (("--max-pairs", max_pairs), ("--max-body-bytes", max_body_bytes),
                        ("--max-candidates", max_candidates)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CoraError(f"{flag} = {value!r}: must be an integer >= 1")
    if not (isinstance(shutdown_grace, (int, float)) and math.isfinite(shutdown_grace) and shutdown_grace >= 0):
        raise CoraError(f"--shutdown-grace = {shutdown_grace!r}: must be a number >= 0 (seconds)")
    if not (isinstance(request_timeout, (int, float)) and math.isfinite(request_timeout) and request_timeout > 0):
        raise CoraError(f"--request-timeout = {request_timeout!r}: must be a number > 0 (seconds)")


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """A warning line for a service that anyone on the network may use: listening beyond this
    machine's loopback interface without an API key. None when there is nothing to warn about."""
    if api_key is not None or is_loopback(host):
        return None
    return (f"serving on {host} without an API key: anyone who can reach the port can use the model "
            "(set --api-key-file or CORA_API_KEY, or listen on 127.0.0.1 behind a reverse proxy)")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def make_server(app: FastAPI, host: str, port: int, grace_s: float = 10.0, log_level: str = "info") -> GracefulServer:
    """A server for ``app`` (made by :func:`cora.serve.app.create_app`); ``port`` 0: any free one."""
    if grace_s < 0:
        raise ValueError(f"grace_s must be >= 0, got {grace_s}")
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_keep_alive=KEEP_ALIVE_S,
                            timeout_graceful_shutdown=grace_s + BACKSTOP_S)
    return GracefulServer(config, app.state.batcher, grace_s)


def serve(app: FastAPI, host: str, port: int, grace_s: float = 10.0, log_level: str = "info") -> None:
    """Serve ``app`` until SIGTERM / SIGINT; returns after an orderly shutdown."""
    server = make_server(app, host, port, grace_s, log_level)
    if threading.current_thread() is not threading.main_thread():
        server.run()  # no signal handling off the main thread (uvicorn installs none there either)
        return
    # uvicorn re-raises the signal it caught once it has shut down; with SIGTERM's default action
    # that would kill the process (status -15) after an orderly drain. The handler it restores and
    # re-raises to is this no-op, so an orderly stop exits 0. Ctrl-C keeps Python's handler
    # (KeyboardInterrupt: "interrupted", 130).
    previous = signal.signal(signal.SIGTERM, _already_shut_down)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _already_shut_down(signum, frame) -> None:
    """SIGTERM re-raised by uvicorn after its shutdown: nothing is left to do."""


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, grace_s: float = 2.0,
                    start_timeout_s: float = 60.0, log_level: str = "warning"):
    """Serve ``app`` from a background thread for the ``with`` block (a notebook, a test, a client
    that must talk HTTP); yields the base URL. ``port`` 0: one the OS picks. Leaving the block
    shuts the server down as SIGTERM would."""
    server = make_server(app, host, port, grace_s=grace_s, log_level=log_level)
    thread = threading.Thread(target=server.run, name="cora-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(grace_s + BACKSTOP_S + 5)
