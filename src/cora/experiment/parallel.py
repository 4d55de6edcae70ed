"""``cora experiment --jobs N``: an experiment's trainings in N worker processes at once.

Each training (a CF model, one seed of an LLM row) is one task, run by a child process
(``cora experiment CONFIG --task NAME``) exactly as the sequential loop would run it, into the
same run folder, so a parallel run and a sequential one resume each other. A task starts once
the tasks it reads have finished: its CF model, and the donor of a stage it takes (CoLLM's and
BinLLM's first stage is TALLRec's run). Why processes, not threads: one small model leaves a
GPU mostly idle between kernel launches, and several processes fill those gaps; on a CPU each
process gets its own threads.

A ``deadline`` stops the workers still running (they resume from their last checkpoint next
time); finished tasks are never redone. Each task's output goes to ``<out>/logs/<task>.log``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cora.errors import CoraError
from cora.experiment.carry import committed_predictions, committed_results
from cora.experiment.execute import run_cf, run_training
from cora.experiment.plan import Training
from cora.progress import make_console

console = make_console()


@dataclass
class Task:
    name: str                      # Training.task: "cf:mf", "TALLRec", "CoRA-MF#2" (row CoRA-MF, seed 2)
    needs: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    started: float = 0.0
    state: str = "waiting"         # waiting, running, done, failed, skipped, stopped
    gpu: str | None = None         # its CUDA_VISIBLE_DEVICES under --gpus


def parse_task(exp, name: str) -> Training:
    """The training a ``--task`` value names (:attr:`Training.task`); a clear error for a bad one."""
    if name.startswith("cf:"):
        key = name[3:]
        if key not in exp.cf:
            raise CoraError(f"--task {name}: no CF model '{key}' under 'cf' (have: {', '.join(exp.cf)})")
        return exp.plan.cf_models[key]
    row_name, _, seed = name.partition("#")
    rows = [r for r in exp.rows if r.name == row_name and r.method is not None]
    if not rows:
        raise CoraError(f"--task {name}: no LLM row '{row_name}'")
    row = rows[0]
    if seed:
        if not seed.isdigit() or int(seed) not in (row.seeds or []):
            raise CoraError(f"--task {name}: row '{row_name}' has no seed {seed} (seeds: {row.seeds})")
        return exp.plan.training(row.name, int(seed))
    if row.seeds:
        raise CoraError(f"--task {name}: row '{row_name}' is seeded; name one seed, e.g. {row_name}#{row.seeds[0]}")
    return exp.plan.training(row.name)


def plan_tasks(exp, only: list[str] | None = None) -> list[Task]:
    """Every training of the rows in ``only`` (default: all), with the CF models and stage donors
    they read, as tasks in the file's row order, which is the order ready tasks start in."""
    return [Task(t.task, [n.task for n in t.needs]) for t in exp.plan.needed(only)]


def run_parallel(exp, config: Path, jobs: int, only: list[str] | None = None, deadline_s: float | None = None,
                 placement: list[str] | None = None, poll_s: float = 2.0,
                 gpus: list[str] | None = None) -> dict[str, str]:
    """Run the planned tasks, at most ``jobs`` at a time; returns each task's final state. ``gpus``:
    each running task holds one of these ids as its CUDA_VISIBLE_DEVICES (an id listed twice: two
    tasks may share that GPU), given back when it ends."""
    if jobs < 1:
        raise CoraError(f"--jobs must be >= 1 (got {jobs})")
    tasks = plan_tasks(exp, only)
    logs = Path(exp.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    console.print(f"[bold]{len(tasks)} trainings, {jobs} at a time[/]"
                  + (f", stopping at {deadline_s:.0f} s" if deadline_s else ""))
    by_name = {t.name: t for t in tasks}
    free_gpus = list(gpus or [])
    previous = _stop_on_sigterm()
    try:
        while True:
            for t in tasks:
                if t.state == "running" and t.proc.poll() is not None:
                    t.state = "done" if t.proc.returncode == 0 else "failed"
                    if t.gpu is not None:
                        free_gpus.append(t.gpu)
                    console.print(f"{time.time() - t0:7.0f} s  {t.name}: {t.state} "
                                  f"({time.time() - t.started:.0f} s; log {logs / _log_name(t.name)})")
                if t.state == "waiting" and any(by_name[n].state in ("failed", "skipped", "stopped") for n in t.needs):
                    t.state = "skipped"
                    console.print(f"[yellow]{t.name}: skipped (needs {', '.join(t.needs)})")
            running = sum(t.state == "running" for t in tasks)
            for t in tasks:
                if running >= jobs:
                    break
                if t.state == "waiting" and all(by_name[n].state == "done" for n in t.needs):
                    env = None
                    if gpus:
                        t.gpu = free_gpus.pop(0)
                        env = {**os.environ, "CUDA_VISIBLE_DEVICES": t.gpu}
                    t.proc = subprocess.Popen(
                        [sys.executable, "-m", "cora", "experiment", str(config), "--task", t.name, *(placement or [])],
                        stdout=(logs / _log_name(t.name)).open("a"), stderr=subprocess.STDOUT, env=env,
                        start_new_session=True)  # its own group: a stop reaches its children too
                    t.state, t.started = "running", time.time()
                    running += 1
                    console.print(f"{time.time() - t0:7.0f} s  {t.name}: started"
                                  + (f" on GPU {t.gpu}" if t.gpu is not None else ""))
            if all(t.state not in ("waiting", "running") for t in tasks):
                break
            if deadline_s is not None and time.time() - t0 > deadline_s:
                console.print(f"[yellow]deadline ({deadline_s:.0f} s): stopping the running trainings")
                break
            time.sleep(poll_s)
    finally:  # a deadline, Ctrl-C, a SIGTERM or an error here: no orphaned worker keeps the GPU
        _stop([t for t in tasks if t.state == "running"])
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    for t in tasks:
        if t.state in ("running", "waiting"):
            t.state = "stopped"
    return {t.name: t.state for t in tasks}


def _stop_on_sigterm():
    """Make SIGTERM (``kill PID``, a job scheduler's stop) leave through ``finally`` like Ctrl-C:
    Python's default ends the process at once, leaving the workers (their own process groups)
    training on. Returns the previous handler, or None off the main thread (no handler there)."""
    def stop(signum, frame):
        console.print("[yellow]SIGTERM: stopping the running trainings (each resumes from its last checkpoint)")
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        return None


def _stop(running: list[Task], grace_s: float = 20.0) -> None:
    for t in running:
        if t.proc.poll() is None:
            os.killpg(t.proc.pid, signal.SIGTERM)
    end = time.time() + grace_s
    for t in running:
        try:
            t.proc.wait(timeout=max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(t.proc.pid, signal.SIGKILL)
            t.proc.wait()
        if t.state == "running":
            t.state = "stopped"


def _log_name(task: str) -> str:
    return task.replace(":", "-").replace("#", "-seed") + ".log"


def run_task(exp, name: str) -> None:
    """One training, as the sequential loop runs it (a carried or finished one is not redone)."""
    t = parse_task(exp, name)
    if t.row is None:  # the CF model its LLM rows read (a CF row's own result comes from it)
        run_cf(exp, t.cf)
        return
    committed, _ = committed_results(exp)
    run_training(exp, t, committed, committed_predictions(exp) if committed else {})
