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
                tf32: bool = False, jobs: int | None = None, deadline_min: float | None = None, status: bool = False,
                task: str | None = None, backbone: str | None = None, dtype: str | None = None,
                gpus: str | None = None, source: Path | None = None) -> None:
    """What ``cora experiment`` does with its options (see its help in cora.cli)."""
    refuse_distributed_launch(config)
    gpu_ids = parse_gpus(gpus)
    if jobs is None:
        jobs = len(gpu_ids) if gpu_ids else 1
    if gpu_ids:
        if jobs > len(gpu_ids):
            raise CoraError(f"--jobs {jobs} with --gpus {gpus}: one worker per listed GPU; list an id twice to "
                            f"share it (e.g. --gpus {','.join(gpu_ids * 2)})")
        if device is not None and device not in ("cuda", "auto"):
            raise CoraError(f"--gpus gives each worker one GPU, seen as cuda; --device {device} contradicts it")
        device = "cuda"
    if source is not None and not source.is_file():
        raise CoraError(f"--source {source}: no such file")
    exp = Experiment.load(config)
    if source is not None:  # a local copy of what the file's `source` names
        exp.source = str(source)
    exp.place(device, tf32, backbone, dtype)
    if status:
        console.print(status_table(experiment_status(exp, only)))
        return
    states: dict[str, str] = {}
    if task is not None:
        run_task(exp, task)
        return
    if (jobs > 1 or gpu_ids) and not report_only:  # worker processes (one GPU listed: one worker on it)
        ensure_data(exp)  # once, before the workers start
        placement = ((["--device", device] if device else []) + (["--tf32"] if tf32 else [])
                     + (["--backbone", backbone] if backbone else []) + (["--dtype", dtype] if dtype else []))
        states = run_parallel(exp, config, jobs, only, deadline_min * 60 if deadline_min else None, placement,
                              gpus=gpu_ids)
        console.print("  ".join(f"{name}: {state}" for name, state in states.items()))
        report_only = True
    elif deadline_min is not None:
        raise CoraError("--deadline-min needs --jobs N (N > 1) or --gpus")
    results = write_results(exp) if report_only else run_experiment(exp, only)
    console.print((exp.results_root / "results.md").read_text())
    if results["missing"]:
        console.print(f"[yellow]not finished:[/] {', '.join(results['missing'])}")
    # As the sequential loop: the results of what finished are written, then a failure is an error.
    if failed := [name for name, state in states.items() if state == "failed"]:
        raise CoraError(f"{len(failed)} training(s) failed ({', '.join(failed)}); see their logs in {exp.out}/logs/")


def parse_gpus(gpus: str | None) -> list[str]:
    """``"0,1,3"`` -> ``["0", "1", "3"]``: CUDA device ids, each a worker's CUDA_VISIBLE_DEVICES."""
    if gpus is None:
        return []
    ids = [g.strip() for g in gpus.split(",")]
    if not ids or not all(g.isdigit() for g in ids):
        raise CoraError(f"--gpus {gpus!r}: write GPU ids separated by commas, e.g. 0,1,2,3")
    return ids


def refuse_distributed_launch(config: Path) -> None:
    """Under ``accelerate launch`` / torchrun every process would run the whole experiment: train
    the CF models into the same folders and write the same results. Refused; the machine's GPUs
    are used through ``--jobs --gpus`` instead (one row per GPU, no gradient traffic)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        n = os.environ["WORLD_SIZE"]
        raise CoraError(f"cora experiment runs its rows side by side, not as one data-parallel job: instead of a "
                        f"{n}-process launch run `cora experiment {config} --jobs {n} --gpus "
                        f"{','.join(str(i) for i in range(int(n)))}` (one row per GPU)")
