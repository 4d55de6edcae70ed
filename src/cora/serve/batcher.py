"""Micro-batching: concurrent requests share one forward pass.

An LLM forward pass over 32 prompts costs little more than over one, so the service does not run
the model per request. Requests (each a list of pairs) wait in a bounded asyncio queue; a single
worker task takes the first waiting request, then keeps taking more until it holds ``max_batch``
pairs or ``max_wait_ms`` have passed, scores them all in one call in a one-thread executor (the
event loop stays free to accept requests, and the model never runs twice at once), and resolves
each request's future with its own slice of the scores. The score function is
``score_fn(pairs, keep_going)``: it runs its forward passes of ``max_batch`` pairs one by one and
stops (returns None) when ``keep_going()`` turns False between two of them.

Back-pressure: when ``queue_size`` requests are already waiting, :meth:`MicroBatcher.submit`
raises :class:`QueueFull` at once (the app answers 503 + Retry-After) instead of letting latency
grow without bound. A request that would overflow the batch being collected is carried over to
the next batch (so at most one request waits outside the queue). A request larger than
``max_batch`` is scored alone, in forward passes of ``max_batch`` pairs (the score function's
batch size).

Time limit: :meth:`MicroBatcher.submit` with ``timeout_s`` raises :class:`TimedOut` once that
many seconds have passed since the request arrived (queue wait included; the app answers 504).
The request is then dropped: skipped if it is still queued, and if it is being scored,
``keep_going`` turns False, so it holds the model at most one more forward pass (``max_batch``
pairs) instead of to its end.

Shutdown is explicit, so no caller is left waiting on a future nobody will resolve:
:meth:`close` refuses new requests (:class:`ShuttingDown`: the app answers 503);
:meth:`drain` lets the queued ones be scored for up to a grace period and then rejects the rest
with :class:`ShuttingDown`; :meth:`stop` (the app's lifespan end) rejects whatever is still held,
the batch in the model included, and stops the worker. A forward pass already running in the
executor thread cannot be interrupted; its callers are answered (or rejected by ``stop``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# (pairs, keep_going) -> scores, or None when keep_going() turned False before the last forward pass
ScoreFn = Callable[[list[tuple[int, int]], Callable[[], bool]], "np.ndarray | None"]


class QueueFull(Exception):
    """The request queue is full: the caller should retry later."""


class ShuttingDown(Exception):
    """The service is stopping: this request will not be scored here (retry on another instance)."""


class TimedOut(Exception):
    """The request was not scored within its time limit; it no longer holds the model."""


class MicroBatcher:
    def __init__(self, score_fn: ScoreFn, max_batch: int = 32, max_wait_ms: float = 10.0, queue_size: int = 256):
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and max_wait_ms >= 0")
        self.score_fn = score_fn
        self.max_batch, self.max_wait, self.queue_size = max_batch, max_wait_ms / 1000.0, queue_size
        self.stats = {"requests": 0, "pairs": 0, "batches": 0, "rejected": 0, "timed_out": 0}
        self.queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.closing = False  # no new requests (close)
        self._rejecting = False  # held requests are answered with ShuttingDown, not scored (drain's end, stop)
        self._pending = 0  # submitted requests whose future is not resolved yet
        self._idle: asyncio.Event | None = None  # set while _pending == 0

    # ---------------------------------------------------------------- life cycle
    async def start(self) -> None:
        """Create the queue and the worker on the running event loop (the app's lifespan)."""
        self.queue = asyncio.Queue(maxsize=self.queue_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cora-model")
        self._task = asyncio.create_task(self._run(), name="cora-batcher")
        self.closing = self._rejecting = False
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def close(self) -> None:
        """Refuse new requests from now on (:meth:`submit` raises :class:`ShuttingDown`)."""
        self.closing = True

    async def drain(self, grace_s: float) -> int:
        """Close, give the requests already submitted up to ``grace_s`` seconds to be scored, then
        reject those still waiting with :class:`ShuttingDown`. Returns how many it took from the
        queue to reject (the worker rejects the one or two it holds apart from a running batch)."""
        self.close()
        if self._idle is None:
            return 0
        try:
            await asyncio.wait_for(self._idle.wait(), max(grace_s, 0.0))
            return 0
        except TimeoutError:
            return self._reject_waiting()

    async def stop(self) -> None:
        """Reject everything still held (queued, being collected, in the model) and stop the worker."""
        self.close()
        self._rejecting = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._reject_waiting()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._task = self._executor = None

    def _reject_waiting(self) -> int:
        """Reject every queued request; the worker rejects the ones it holds (it checks ``_rejecting``)."""
        self._rejecting = True
        n = 0
        while self.queue is not None and not self.queue.empty():
            _, fut = self.queue.get_nowait()
            n += _reject(fut)
        return n

    @property
    def waiting(self) -> int:
        return self.queue.qsize() if self.queue is not None else 0

    # ---------------------------------------------------------------- requests
    async def submit(self, pairs: list[tuple[int, int]], timeout_s: float | None = None) -> np.ndarray:
        """Scores of ``pairs`` (in order), once the batch holding them has run; :class:`TimedOut`
        after ``timeout_s`` seconds (None: no limit)."""
        if self.closing:
            raise ShuttingDown("the server is shutting down")
        if self.queue is None or self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running (start it in the app's lifespan)")
        fut = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((pairs, fut))
        except asyncio.QueueFull:
            self.stats["rejected"] += 1
            raise QueueFull(f"{self.queue_size} requests already waiting") from None
        self._pending += 1
        self._idle.clear()
        fut.add_done_callback(self._resolved)
        if timeout_s is None:
            return await fut
        try:
            # On timeout wait_for cancels the future: the worker skips it, or stops scoring it.
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            self.stats["timed_out"] += 1
            raise TimedOut(f"not scored within {timeout_s:g} s") from None

    def _resolved(self, _fut) -> None:
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()

    async def _collect(self, first) -> tuple[list, object]:
        """``first`` plus whatever arrives within ``max_wait`` up to ``max_batch`` pairs; returns
        (batch, carried-over request or None)."""
        loop = asyncio.get_running_loop()
        batch, n = [first], len(first[0])
        deadline = loop.time() + self.max_wait
        while n < self.max_batch:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            if n + len(item[0]) > self.max_batch:
                return batch, item
            batch.append(item)
            n += len(item[0])
        return batch, None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carry, batch = None, []
        try:
            while True:
                first = carry if carry is not None else await self.queue.get()
                carry = None
                batch, carry = await self._collect(first)
                batch = [(pairs, fut) for pairs, fut in batch if not fut.done()]  # callers that gave up
                if self._rejecting:  # shutting down: answer now rather than after a forward pass
                    for _, fut in batch + ([carry] if carry is not None else []):
                        _reject(fut)
                    batch, carry = [], None
                if not batch:
                    continue
                pairs = [p for ps, _ in batch for p in ps]

                def keep_going(held=tuple(fut for _, fut in batch)) -> bool:
                    # Read from the model's thread between forward passes: a done future is a
                    # caller that has gone (timed out), and _rejecting a server that is stopping.
                    return not self._rejecting and not all(fut.done() for fut in held)

                try:
                    scores = await loop.run_in_executor(self._executor, self.score_fn, pairs, keep_going)
                except Exception as e:  # fail this batch's requests, keep serving
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                if scores is None:  # its callers are gone (timed out) or the server is stopping
                    for _, fut in batch:
                        _reject(fut)
                    continue
                self.stats["batches"] += 1
                self.stats["requests"] += len(batch)
                self.stats["pairs"] += len(pairs)
                start = 0
                for ps, fut in batch:
                    if not fut.done():
                        fut.set_result(np.asarray(scores[start:start + len(ps)]))
                    start += len(ps)
        finally:  # stopped: nobody else will answer the requests held here
            for _, fut in batch + ([carry] if carry is not None else []):
                _reject(fut)


def _reject(fut: asyncio.Future) -> int:
    """Answer a waiting caller with :class:`ShuttingDown` (not a cancellation, which would reach
    the HTTP handler as a CancelledError and the client as a dropped connection or a 500)."""
    if fut.done():
        return 0
    fut.set_exception(ShuttingDown("the server is shutting down; the request was not scored"))
    return 1
