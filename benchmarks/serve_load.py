"""Load test of `cora serve`: throughput and latency with micro-batching on vs off, side by side.

    python benchmarks/serve_load.py RUN [--seconds 30] [--clients 50] [--pairs 4] [--cf CF_RUN]
                                        [--mix 0.5 --k 10 --candidates 20]

RUN is a trained run folder (``cora train``); any run works, e.g. the demo's or a tiny test run.
Each mode gets the real service (``python -m cora.cli serve RUN``) in its own subprocess on a
free loopback port, so the clients' CPU work (JSON, HTTP) does not share an interpreter with the
server. All servers load the model at once (an idle server costs no CPU); the modes are then
measured one after the other: wait for ``/health``, send one warm-up request, then run a closed
loop for ``--seconds``: ``--clients`` concurrent httpx.AsyncClient tasks, each sending
``POST /score`` with ``--pairs`` random known (user, item) pairs and the next request as soon as
the answer comes. With ``--mix F`` a share F of the requests (drawn per request, seeded) are
``POST /recommend`` for a random known user (``--k`` of ``--candidates``) instead: the mixed
load, where CF retrieval runs on the event loop and the reranking pairs share forward passes
with /score's. Requests still in flight at the end get ``--drain`` more seconds and are
counted as "unfinished" after that, so a mode never lasts more than seconds + drain once its
server is up (start-up waits at most 180 s).

Modes (the service's own settings):
  on    max_batch 32, max_wait_ms 10  concurrent requests share forward passes
  off   max_batch 1,  max_wait_ms 0   one pair per forward pass, nothing shared

Reported per mode: completed requests, requests/s over the timed phase, pairs/s the model
scored (batcher stats), p50 / p95 / p99 latency of the completed requests (and, mixed, p50 / p99
per endpoint), errors (non-200 answers and transport failures; 503s also apart), unfinished
requests, and from the batcher's stats (``GET /info``, timed phase only) the model calls
(batches it formed), requests per call, forward passes (a call runs in passes of at most
max_batch pairs) and mean pairs per forward pass. The servers inherit this
process's environment (set ``OMP_NUM_THREADS`` to pin their torch threads). With the defaults
it ends well under 10 minutes on a 2-core CPU (start-up + 2 modes x (30 s + at most 60 s drain)).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

MODES = {"on": (32, 10.0), "off": (1, 0.0)}  # name -> (max_batch, max_wait_ms)
START_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``cora serve`` in a subprocess for the duration of a ``with`` block."""

    def __init__(self, run: Path, max_batch: int, max_wait_ms: float, cf: Path | None = None,
                 queue_size: int = 256):
        self.port = free_port()
        self.args = [sys.executable, "-m", "cora.cli", "serve", str(run), "--host", "127.0.0.1",
                     "--port", str(self.port), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
                     "--queue-size", str(queue_size)] + (["--cf", str(cf)] if cf else [])
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        """Start the process; :meth:`wait_ready` waits for it (servers of several modes start together)."""
        self.log = tempfile.TemporaryFile(mode="w+")
        self.started = time.time()
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "COLUMNS": "200"})
        return self

    def wait_ready(self) -> str:
        """The base URL once ``/health`` answers."""
        deadline = self.started + START_TIMEOUT_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cora serve exited with {self.proc.returncode}:\n{self._log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"cora serve did not answer /health within {START_TIMEOUT_S:.0f} s")

    def _log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:]

    def problems(self, limit: int = 5) -> list[str]:
        """The server's own warnings and errors so far (not its access log): why a client failed."""
        self.log.seek(0)
        lines = [x.rstrip() for x in self.log if x.startswith(("WARNING", "ERROR", "Traceback", "CRITICAL"))]
        self.log.seek(0, 2)
        return lines[:limit]

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


ENDPOINTS = ("/score", "/recommend")


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {e: [] for e in ENDPOINTS})  # s, 200s only
    errors: int = 0
    rejected: int = 0  # 503 (queue full), also counted in errors
    unfinished: int = 0
    error_samples: list[str] = field(default_factory=list)  # the first few, to say what went wrong


async def _client(http: httpx.AsyncClient, requests, deadline: float, tally: Tally) -> None:
    for path, body in requests:
        if time.perf_counter() >= deadline:
            return
        t0 = time.perf_counter()
        try:
            r = await http.post(path, json=body)
        except httpx.HTTPError as e:
            tally.errors += 1
            _sample(tally, f"{path}: {type(e).__name__}: {e}")
            continue
        if r.status_code == 200:
            tally.latencies[path].append(time.perf_counter() - t0)
        else:
            tally.errors += 1
            tally.rejected += r.status_code == 503
            _sample(tally, f"{path}: {r.status_code} {r.text[:200]}")


def _sample(tally: Tally, text: str) -> None:
    if len(tally.error_samples) < 5:
        tally.error_samples.append(text)


def _requests(users: list[int], items: list[int], per_request: int, rng: np.random.Generator,
              mix: float = 0.0, k: int = 10, candidates: int = 20):
    """An endless stream of (path, body): /score with random known pairs, or with probability
    ``mix`` /recommend for a random known user (cora's internal ids, as known_ids gives them)."""
    while True:
        if mix > 0 and rng.random() < mix:
            yield "/recommend", {"user": int(rng.choice(users)), "k": k, "candidates": candidates, "internal_ids": True}
        else:
            us, its = rng.choice(users, per_request), rng.choice(items, per_request)
            yield "/score", {"pairs": [{"user": int(u), "item": int(i)} for u, i in zip(us, its)], "internal_ids": True}


def forward_passes(stats: dict, max_batch: int, per_request: int) -> float:
    """Forward passes behind the batcher's stats: a model call holds whole requests and runs in
    passes of ``max_batch`` pairs; a call never exceeds ``max_batch`` pairs unless it is a single
    request larger than that (then it is that request alone). ``per_request``: the size of the
    largest request; with requests of several sizes above ``max_batch`` > 1 the count is unknown
    (NaN) unless every request has that size (a /score-only load)."""
    if per_request <= max_batch:
        return stats["batches"]
    if max_batch == 1:
        return stats["pairs"]
    if stats["pairs"] == stats["requests"] * per_request:
        return stats["requests"] * -(-per_request // max_batch)
    return float("nan")


def _pct(latencies: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(latencies) * 1000, q)) if latencies else float("nan")


async def _load(url: str, users: list[int], items: list[int], clients: int, seconds: float, drain: float,
                per_request: int, seed: int, max_batch: int, mix: float = 0.0, k: int = 10,
                candidates: int = 20) -> dict:
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    stream = lambda s: _requests(users, items, per_request, np.random.default_rng(s), mix, k, candidates)  # noqa: E731
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=seconds + drain + 60) as http:
        for path in ENDPOINTS if mix > 0 else ENDPOINTS[:1]:  # warm both paths up
            body = next(b for where, b in stream(seed) if where == path)
            (await http.post(path, json=body)).raise_for_status()
        before = (await http.get("/info")).json()["stats"]
        tally = Tally()
        t0 = time.perf_counter()
        deadline = t0 + seconds
        tasks = [asyncio.create_task(_client(http, stream(seed + 1 + c), deadline, tally)) for c in range(clients)]
        done, pending = await asyncio.wait(tasks, timeout=seconds + drain)
        elapsed = time.perf_counter() - t0
        for t in pending:
            t.cancel()
        tally.unfinished = len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
        after = (await http.get("/info")).json()["stats"]
    stats = {key: after[key] - before[key] for key in after}
    every = [x for lat in tally.latencies.values() for x in lat]
    largest = max(per_request, candidates) if mix > 0 else per_request
    fw = forward_passes(stats, max_batch, largest)
    return {"requests": len(every), "elapsed_s": elapsed, "rps": len(every) / elapsed,
            "pairs_per_s": stats["pairs"] / elapsed,
            "p50_ms": _pct(every, 50), "p95_ms": _pct(every, 95), "p99_ms": _pct(every, 99), "errors": tally.errors,
            "rejected": tally.rejected, "unfinished": tally.unfinished, "error_samples": tally.error_samples,
            "model_calls": stats["batches"],
            "requests_per_call": stats["requests"] / stats["batches"] if stats["batches"] else float("nan"),
            "forward_passes": fw, "mean_batch": stats["pairs"] / fw if fw and fw == fw else float("nan"),
            "endpoints": {path: {"requests": len(lat), "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)}
                          for path, lat in tally.latencies.items()}}


def known_ids(run: Path) -> tuple[list[int], list[int], dict]:
    """Users and items the service knows (from the run's dataset; no model is loaded here)."""
    from cora.config import LLMConfig
    from cora.data.store import load_dataset
    from cora.errors import CoraError
    from cora.serve.catalog import Catalog

    if not (run / "config.yaml").exists():
        raise CoraError(f"{run}: not a cora run folder (no config.yaml)")
    cfg = LLMConfig.load(run / "config.yaml")
    catalog = Catalog.from_dataset(load_dataset(cfg.data))
    return sorted(catalog.histories), sorted(catalog.titles), {"method": cfg.method, "backbone": cfg.backbone}


def print_table(results: dict[str, dict], header: str, console: Console | None = None, mixed: bool = False) -> None:
    t = Table(title=header)
    t.add_column("")
    for name in results:
        mb, mw = MODES[name]
        t.add_column(f"batching {name}\n(max_batch {mb}, wait {mw:g} ms)", justify="right")
    rows = [("completed requests", "requests", "{:,}"), ("requests/s", "rps", "{:.1f}"),
            ("pairs/s (model)", "pairs_per_s", "{:.1f}"), ("p50 latency (ms)", "p50_ms", "{:.1f}"),
            ("p95 latency (ms)", "p95_ms", "{:.1f}"), ("p99 latency (ms)", "p99_ms", "{:.1f}"),
            ("errors", "errors", "{:,}"), ("  of which 503", "rejected", "{:,}"), ("unfinished", "unfinished", "{:,}"),
            ("model calls (batches)", "model_calls", "{:,}"), ("mean requests / call", "requests_per_call", "{:.2f}"),
            ("forward passes", "forward_passes", "{:,}"), ("mean pairs / forward", "mean_batch", "{:.2f}")]
    for label, key, fmt in rows:
        t.add_row(label, *(_fmt(fmt, r[key]) for r in results.values()))
    if mixed:
        for path in ENDPOINTS:
            t.add_row(f"{path}: requests", *(f"{r['endpoints'][path]['requests']:,}" for r in results.values()))
            t.add_row(f"{path}: p50 / p99 (ms)", *(f"{r['endpoints'][path]['p50_ms']:.1f} / "
                                                  f"{r['endpoints'][path]['p99_ms']:.1f}" for r in results.values()))
    (console or Console()).print(t)
    for name, r in results.items():
        for sample in r["error_samples"]:
            (console or Console()).print(f"[red]{name}: {sample}[/]", highlight=False)


def _fmt(fmt: str, value) -> str:
    return "n/a" if isinstance(value, float) and value != value else fmt.format(value)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="Trained run folder (cora train).")
    p.add_argument("--seconds", type=float, default=30.0, help="Timed phase per mode (30).")
    p.add_argument("--clients", type=int, default=50, help="Concurrent clients (50).")
    p.add_argument("--pairs", type=int, default=4, help="Pairs per /score request (4).")
    p.add_argument("--mix", type=float, default=0.0, help="Share of requests that are /recommend (0: /score only).")
    p.add_argument("--k", type=int, default=10, help="k of each /recommend (10).")
    p.add_argument("--candidates", type=int, default=20, help="candidates of each /recommend (20).")
    p.add_argument("--drain", type=float, default=60.0, help="Grace for in-flight requests after the timed phase (60).")
    p.add_argument("--modes", default="on,off", help="Comma-separated subset of: on, off.")
    p.add_argument("--cf", type=Path, default=None, help="CF run (only for runs without a CF model).")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if a.seconds <= 0 or a.clients < 1 or a.pairs < 1 or a.drain < 0 or not modes or set(modes) - set(MODES):
        p.error("need --seconds > 0, --clients >= 1, --pairs >= 1, --drain >= 0, --modes from: on, off")
    if not 0 <= a.mix <= 1 or not 1 <= a.k <= a.candidates:
        p.error("need 0 <= --mix <= 1 and 1 <= --k <= --candidates")
    users, items, info = known_ids(a.run)
    results = {}
    with contextlib.ExitStack() as stack:  # every mode's server loads the model at the same time
        servers = {name: stack.enter_context(Server(a.run, *MODES[name], cf=a.cf)) for name in modes}
        for name, server in servers.items():  # ...and the modes are measured one after the other
            url = server.wait_ready()
            results[name] = asyncio.run(_load(url, users, items, a.clients, a.seconds, a.drain, a.pairs, a.seed,
                                              MODES[name][0], a.mix, a.k, a.candidates))
            results[name]["error_samples"] += [f"server log: {x}" for x in server.problems()]
    load = (f"{a.pairs} pairs/request" if a.mix == 0 else
            f"mixed: {1 - a.mix:.0%} /score ({a.pairs} pairs), {a.mix:.0%} /recommend (k {a.k} of {a.candidates})")
    header = (f"cora serve {a.run} ({info['method']}, {info['backbone']}): {a.clients} clients x {a.seconds:g} s, "
              f"{load}, {os.cpu_count()} CPUs")
    print_table(results, header, mixed=a.mix > 0)
    return results


if __name__ == "__main__":
    from cora.errors import CoraError

    try:
        main()
    except (CoraError, RuntimeError) as e:  # a bad RUN, a server that would not start: one line
        sys.exit(f"error: {e}")
