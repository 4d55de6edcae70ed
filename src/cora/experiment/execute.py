"""Running an experiment's trainings: the dataset import, CF runs, LLM runs (with stages taken
from other rows), one after another; ``--jobs`` workers (:mod:`cora.experiment.parallel`) run
each training through :func:`run_training` too.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from cora import layout
from cora.errors import CoraError
from cora.experiment.carry import (
    carried_run,
    committed_predictions,
    committed_results,
    copy_files,
    keep_cf,
    restore_cf,
)
from cora.experiment.results import write_results
from cora.io import read_json
from cora.progress import make_console

if TYPE_CHECKING:
    from cora.experiment.plan import Training
    from cora.experiment.spec import Experiment

console = make_console(stderr=True)


def ensure_data(exp: Experiment) -> None:
    """Import the dataset from ``source`` when its folder is not there yet. ``source`` is a file, or
    a download name (``collm-ml1m``: the paper's splits), fetched and checked beside ``data`` once."""
    if (Path(exp.data) / "meta.json").exists():
        return
    if not exp.source:
        raise CoraError(f"{exp.data}: dataset folder not found and no 'source' to import it from")
    from cora.data.collm_import import import_collm
    from cora.data.download import DOWNLOADS

    if exp.source in DOWNLOADS:
        download, filename = DOWNLOADS[exp.source]
        local = Path(exp.data).parent / filename
        if not local.exists():
            console.print(f"[bold]downloading[/] {exp.source} -> {local} (a local copy: --source PATH)")
            download(local)
        exp.source = str(local)

    if not exp.trust_pickle:
        raise CoraError(f"{exp.source}: CoLLM's files are pickles, which can run code when loaded; add "
                        "'trust_pickle: true' to the experiment file if you trust this copy")
    console.print(f"[bold]importing[/] {exp.source} -> {exp.data}")
    import_collm(exp.source, exp.data, trust_pickle=True)  # the experiment file said it trusts it


def run_cf(exp: Experiment, key: str) -> Path:
    """Train (or resume, or restore the kept copy of) the CF run ``key`` and score the test key."""
    from cora.cf.train import evaluate_cf_run, train_cf

    model = exp.plan.cf_models[key]
    out, cfg = model.run, model.config
    kept = Path(exp.cf_store) / out.name if key in exp.keep_cf else None
    if kept is not None and not (out.exists() and any(out.iterdir())):
        restore_cf(cfg, kept, out)
    train_cf(cfg, out, resume=True)
    if exp.key not in read_json(out / layout.METRICS):
        evaluate_cf_run(out, "test", exp.test_limit, exp.per_user)
    if kept is not None:
        keep_cf(cfg, out, kept)
    return out


def release_memory() -> None:
    """Return what a finished training held (its backbone, optimizer state, activations) before
    the row's scoring loads the backbone again: Python frees the objects when the last reference
    goes, and the CUDA allocator keeps freed blocks cached until asked to give them back."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_llm(exp: Experiment, t: Training) -> Path:
    from cora.train.run import evaluate_run, train_run

    out = t.run
    if t.cf:
        run_cf(exp, t.cf)
    stage_from = {stage: donor_dir(exp, donor) for stage, donor in t.stage_from.items()}
    if not (out / layout.SUMMARY).exists():
        train_run(t.config, out, resume=(out / layout.CONFIG).exists(), stage_from=stage_from)
        release_memory()  # the trained copy of the backbone goes before scoring loads the best weights
    metrics = read_json(out / layout.METRICS) if (out / layout.METRICS).exists() else {}
    if exp.key not in metrics:
        evaluate_run(out, "test", exp.test_limit, per_user=exp.per_user)
    return out


STAGE_FILES = (layout.CONFIG, layout.WEIGHTS, layout.SUMMARY)


def _kept_stage(exp: Experiment, t: Training) -> Path:
    """Where the committed results keep the training's trained stage (``stages/``)."""
    return exp.results_root / "stages" / t.run.name


def donor_dir(exp: Experiment, donor: Training) -> Path:
    """Where a stage is taken from: the donor's run folder when it has finished here, else the
    copy of its trained stage in the committed results (``stages/``; a donor trained on
    another machine), else the run folder (reuse_stage then says it has not finished)."""
    run, kept = donor.run, _kept_stage(exp, donor)
    # A run folder brought back without its weights (records only) is no donor either.
    if not all((run / f).exists() for f in STAGE_FILES) and all((kept / f).exists() for f in STAGE_FILES):
        return kept
    return run


def keep_stage(exp: Experiment, t: Training) -> None:
    """Copy this training into ``<results>/stages/`` when other rows take a stage from its row
    (TALLRec for CoLLM / BinLLM) and it has finished: a few MB of LoRA, so a later machine trains
    the consuming rows without training it again. Each training copies only its own stage, so
    parallel workers never write the same kept folder."""
    if not any(t.row.name in r.stage_from.values() for r in exp.rows):
        return
    run, kept = t.run, _kept_stage(exp, t)
    if not all((run / f).exists() for f in STAGE_FILES):
        return
    if all((kept / f).exists() and (kept / f).read_bytes() == (run / f).read_bytes() for f in STAGE_FILES):
        return
    # The log too: CoLLM's curve shows its first stage.
    copy_files(run, kept, [f for f in STAGE_FILES + (layout.LOG,) if (run / f).exists()])


def run_training(exp: Experiment, t: Training, committed: dict, files: dict) -> None:
    """One training of a row (its CF model, or one seed of an LLM row), resumed where it stopped;
    one finished on another machine and committed with the same settings is not redone. The
    sequential loop and each ``--jobs`` worker (cora.experiment.parallel) run exactly this."""
    if carried_run(exp, t, committed, files):
        console.print(f"{t.name}: carried from {Path(t.row.carry['from']) if t.row.carry else exp.results_root}"
                      "/results.json")
    elif t.row.carry:
        raise CoraError(f"'{t.name}' is carried from {t.row.carry['from']} ('{t.row.carry['training']}') and is "
                        "not trained here: it is not there, or ran with other settings (see above)")
    elif t.row.method is None:
        run_cf(exp, t.cf)
    else:
        run_llm(exp, t)
        keep_stage(exp, t)


def run_experiment(exp: Experiment, only: list[str] | None = None) -> dict:
    """Run (or resume) every row, then write results.md / results.json / plots. Returns the results."""
    ensure_data(exp)
    Path(exp.out).mkdir(parents=True, exist_ok=True)
    failures = {}
    committed, _ = committed_results(exp)
    files = committed_predictions(exp) if committed else {}
    for row in exp.rows:
        if only and row.name not in only:
            continue
        console.rule(f"[bold]{row.index + 1}/{len(exp.rows)}  {row.name}")
        try:
            for t in exp.plan.of(row):
                run_training(exp, t, committed, files)
        except (CoraError, RuntimeError, ValueError) as e:  # one bad row must not cost the others
            failures[row.name] = f"{type(e).__name__}: {e}"
            console.print(f"[red]row '{row.name}' failed:[/] {e}")
            (Path(exp.out) / "errors.log").open("a").write(f"== {row.name}\n{traceback.format_exc()}\n")
    results = write_results(exp)
    if failures:
        raise CoraError(f"{len(failures)} row(s) failed ({', '.join(failures)}); see {exp.out}/errors.log")
    return results
