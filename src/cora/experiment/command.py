"""``cora experiment CONFIG``: which of the ways to go through an experiment's plan the options
ask for (a sequential run, ``--jobs``, ``--status``, a ``--task`` worker, ``--report-only``), and
what the command prints.
"""

from __future__ import annotations

from pathlib import Path

from cora.errors import CoraError
from cora.experiment.execute import ensure_data, run_experiment
from cora.experiment.parallel import run_parallel, run_task
from cora.experiment.results import write_results
from cora.experiment.spec import Experiment
from cora.experiment.status import experiment_status, status_table
from cora.progress import make_console

console = make_console()  # what the command prints (its progress goes to stderr)


def run_command(config: Path, *, only: list[str] | None = None, report_only: bool = False, device: str | None = None,
                tf32: bool = False, jobs: int = 1, deadline_min: float | None = None, status: bool = False,
                task: str | None = None, backbone: str | None = None, dtype: str | None = None) -> None:
    """What ``cora experiment`` does with its options (see its help in cora.cli)."""
    exp = Experiment.load(config)
    exp.place(device, tf32, backbone, dtype)
    if status:
        console.print(status_table(experiment_status(exp, only)))
        return
    states: dict[str, str] = {}
    if task is not None:
        run_task(exp, task)
        return
    if jobs > 1 and not report_only:
        ensure_data(exp)  # once, before the workers start
        placement = ((["--device", device] if device else []) + (["--tf32"] if tf32 else [])
                     + (["--backbone", backbone] if backbone else []) + (["--dtype", dtype] if dtype else []))
        states = run_parallel(exp, config, jobs, only, deadline_min * 60 if deadline_min else None, placement)
        console.print("  ".join(f"{name}: {state}" for name, state in states.items()))
        report_only = True
    elif deadline_min is not None:
        raise CoraError("--deadline-min needs --jobs N (N > 1)")
    results = write_results(exp) if report_only else run_experiment(exp, only)
    console.print((exp.results_root / "results.md").read_text())
    if results["missing"]:
        console.print(f"[yellow]not finished:[/] {', '.join(results['missing'])}")
    # As the sequential loop: the results of what finished are written, then a failure is an error.
    if failed := [name for name, state in states.items() if state == "failed"]:
        raise CoraError(f"{len(failed)} training(s) failed ({', '.join(failed)}); see their logs in {exp.out}/logs/")
