"""Graceful shutdown: the batcher's drain / reject (in process), and `cora serve` in a subprocess
on loopback answering every request it had accepted, 200 or 503, when it gets SIGTERM, then
exiting 0 within seconds."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from cora.serve.batcher import MicroBatcher, ShuttingDown

START_TIMEOUT_S = 120.0


# ----------------------------------------------------------------------------- the batcher
def _slow_batcher(gate: threading.Event, entered: threading.Event, **kw) -> MicroBatcher:
    def score(pairs, keep_going):
        entered.set()
        assert gate.wait(30)
        return np.array([float(u) for u, _ in pairs])

    return MicroBatcher(score, max_batch=1, max_wait_ms=0, queue_size=16, **kw)


def test_drain_without_grace_rejects_the_queue_and_answers_the_batch_in_the_model():
    gate, entered = threading.Event(), threading.Event()

    async def main():
        b = _slow_batcher(gate, entered)
        await b.start()
        tasks = [asyncio.create_task(b.submit([(u, 1)])) for u in range(1, 6)]
        while not entered.is_set():  # request 1 is in the (blocked) model call, 2..5 are queued
            await asyncio.sleep(0.01)
        drain = asyncio.create_task(b.drain(0))
        await asyncio.sleep(0.05)
        with pytest.raises(ShuttingDown):
            await b.submit([(9, 1)])  # closed: refused at once
        gate.set()
        rejected = await drain
        out = await asyncio.gather(*tasks, return_exceptions=True)
        await b.stop()
        return rejected, out

    rejected, out = asyncio.run(main())
    assert list(out[0]) == [1.0]
    assert rejected == 4 and all(isinstance(x, ShuttingDown) for x in out[1:])
    assert "shutting down" in str(out[1])


def test_drain_with_grace_answers_every_queued_request():
    gate, entered = threading.Event(), threading.Event()
    gate.set()

    async def main():
        b = _slow_batcher(gate, entered)
        await b.start()
        tasks = [asyncio.create_task(b.submit([(u, 1)])) for u in range(1, 6)]
        await asyncio.sleep(0)
        rejected = await b.drain(30)
        out = await asyncio.gather(*tasks)
        await b.stop()
        return rejected, out

    rejected, out = asyncio.run(main())
    assert rejected == 0 and [float(x[0]) for x in out] == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_request_in_the_model_stops_between_forward_passes_when_the_grace_ends():
    """A score function asks keep_going() before each forward pass: once the drain's grace is over
    the request in the model is not scored to its end but answered 503 after the pass running."""
    entered, passes = threading.Event(), []

    def score(pairs, keep_going):
        for u, _ in pairs:  # one forward pass per pair
            if not keep_going():
                return None
            entered.set()
            passes.append(u)
            time.sleep(0.05)
        return np.array([float(u) for u, _ in pairs])

    async def main():
        b = MicroBatcher(score, max_batch=1, max_wait_ms=0, queue_size=4)
        await b.start()
        task = asyncio.create_task(b.submit([(u, 1) for u in range(1, 201)]))  # 200 passes: 10 s
        while not entered.is_set():
            await asyncio.sleep(0.01)
        await b.drain(0)
        out = await asyncio.gather(task, return_exceptions=True)
        await b.stop()
        return out

    (out,) = asyncio.run(main())
    assert isinstance(out, ShuttingDown) and len(passes) < 20, (out, len(passes))


def test_stop_rejects_what_it_holds_instead_of_cancelling():
    """A cancelled future would reach the HTTP handler as CancelledError: a 500 or a dropped connection."""
    gate, entered = threading.Event(), threading.Event()

    async def main():
        b = _slow_batcher(gate, entered)
        await b.start()
        tasks = [asyncio.create_task(b.submit([(u, 1)])) for u in range(1, 4)]
        while not entered.is_set():
            await asyncio.sleep(0.01)
        await b.stop()  # request 1 is still in the model call
        out = await asyncio.gather(*tasks, return_exceptions=True)
        gate.set()
        return out

    out = asyncio.run(main())
    assert all(isinstance(x, ShuttingDown) for x in out), out


# ----------------------------------------------------------------------------- cora serve + SIGTERM
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(run, tmp_path, *flags):
    port = _free_port()
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "cora", "serve", str(run), "--host", "127.0.0.1",
                             "--port", str(port), *map(str, flags)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(f"cora serve exited with {proc.returncode}:\n{log.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("cora serve did not answer /health in time")


async def _sigterm_under_load(proc, url: str, n: int, answer_bound_s: float):
    """``n`` concurrent /score requests (8 pairs each, so each is 8 forward passes at --max-batch 1);
    SIGTERM once every one is answered or held by the server; returns (responses, seconds from
    SIGTERM to the last answer, whether a new connection was refused while answers were pending)."""
    body = {"pairs": [{"user": 1 + j % 12, "item": 1 + (5 * j) % 30} for j in range(8)]}
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(base_url=url, timeout=answer_bound_s + 30, limits=limits) as http:
        tasks = [asyncio.create_task(http.post("/score", json=body)) for _ in range(n)]
        deadline = time.monotonic() + 60
        while True:  # done + queued + the one in the model: the server holds every request
            queued = (await http.get("/health")).json()["queued"]
            if sum(t.done() for t in tasks) + queued >= n - 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        refused = None
        if not all(t.done() for t in tasks):  # still answering: but no longer accepting
            try:
                httpx.get(f"{url}/health", timeout=2)
                refused = False
            except httpx.ConnectError:
                refused = True
        done, pending = await asyncio.wait(tasks, timeout=answer_bound_s)
        took = time.monotonic() - t0
        for t in pending:
            t.cancel()
        responses = [t.result() if t in done and not t.exception() else t for t in tasks]
    return responses, took, refused


@pytest.mark.parametrize("grace, expect", [(0, {200, 503}), (60, {200})])
def test_sigterm_answers_every_accepted_request_then_exits_0(run, tmp_path, grace, expect):
    """grace 0: the queued requests are rejected at once (503 with a message), the one in the model
    is answered; grace 60: every queued request is still scored. Either way none hangs and the
    process exits 0."""
    proc, url, log = _start(run, tmp_path, "--max-batch", 1, "--max-wait-ms", 0, "--shutdown-grace", grace)
    try:
        responses, took, refused = asyncio.run(_sigterm_under_load(proc, url, n=30, answer_bound_s=30))
        code = proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.seek(0)
        text = log.read()
        log.close()
    broken = [r for r in responses if not isinstance(r, httpx.Response)]
    assert not broken, f"{len(broken)} requests got no answer: {broken[:3]}\n{text[-3000:]}"
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert took < 30 and code == 0, (took, code, text[-3000:])
    assert refused in (None, True)  # None: everything was answered before the check
    for r in responses:
        if r.status_code == 503:
            assert "shutting down" in r.json()["detail"] and r.headers["retry-after"] == "1"
        else:
            assert len(r.json()["results"]) == 8
    if expect == {200, 503}:
        assert 503 in statuses, statuses  # ~28 were queued when the queue was rejected
    else:
        assert set(statuses) == {200}
    assert "Traceback" not in text and "Exception in ASGI" not in text, text[-3000:]
