"""``cora probe``: build the questions once, score every row on them, write the results.

OUT/probe.md       the accuracy table (and each row's paired difference to the frozen backbone)
OUT/probe.png      grouped bars with 95 % interval whiskers
OUT/probe.json     settings, notes, per row and task: accuracy, interval, difference, choices
OUT/questions.json the questions (prompt, choices, answer), identical for every row
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cora.config import DTYPES
from cora.errors import CoraError
from cora.io import write_json
from cora.probe import report
from cora.probe.catalogue import item_catalogue
from cora.probe.questions import (
    GENRE_PROMPT,
    MATCHING_PROMPT,
    YEAR_PROMPT,
    build_questions,
)
from cora.probe.rows import backbone_row, run_rows

TEMPLATES = {"year": YEAR_PROMPT, "genre": GENRE_PROMPT, "matching": MATCHING_PROMPT}
MIN_RESAMPLES = 1000


def check_probe_options(n: int, seed: int, batch_size: int, resamples: int) -> None:
    """The numbers, before anything is read or loaded."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CoraError(f"--n {n}: must be a whole number of questions per task, at least 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise CoraError(f"--seed {seed}: must be a whole number from 0 to {2**32 - 1}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CoraError(f"--batch-size {batch_size}: must be a whole number, at least 1")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < MIN_RESAMPLES:
        raise CoraError(f"--resamples {resamples}: must be a whole number, at least {MIN_RESAMPLES}")


def run_config(run: Path):
    """A run's config, read without loading anything (so a bad run fails before the first model)."""
    from cora.config import llm_run_config

    if not run.is_dir():
        raise CoraError(f"{run}: no such run folder")
    return llm_run_config(run, "the probe scores LLMs")


def run_probe(runs: Sequence[str | Path] = (), *, backbone: str | None = None, data: str | Path | None = None,
              movies: str | Path | None = None, n: int = 300, seed: int = 0, batch_size: int = 8,
              resamples: int = MIN_RESAMPLES, out: str | Path = "probe",
              log: Callable[[str], None] = lambda _: None, device: str | None = None,
              dtype: str | None = None) -> dict:
    """Score the frozen backbone and every run on the same seeded questions; write OUT (module doc).
    ``device`` / ``dtype``: where and in which precision every row computes (default: the first
    run's, for the frozen row, and each run's own)."""
    check_probe_options(n, seed, batch_size, resamples)
    runs, out = [Path(r) for r in runs], Path(out)
    if out.exists() and not out.is_dir():
        raise CoraError(f"{out}: exists and is not a folder (--out)")
    if movies is not None and not Path(movies).is_file():
        raise CoraError(f"{movies}: movie list not found (--movies)")
    configs = [run_config(r) for r in runs]
    if not configs and backbone is None:
        raise CoraError("nothing to probe: give RUN folders or --backbone NAME")
    first = configs[0] if configs else None
    data = data if data is not None else (first.data if first else None)
    backbone = backbone or first.backbone
    if dtype is not None and dtype not in DTYPES:  # before any question is built or model loaded
        raise CoraError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    placed = {"device": device, "dtype": dtype}  # None: each run where it trained
    dtype, device = dtype or (first.dtype if first else "fp32"), device or (first.device if first else "cpu")

    items, domain, notes = item_catalogue(data, movies)
    questions, task_notes = build_questions(items, n, seed, domain)
    notes += task_notes
    if not questions:
        raise CoraError(f"no question could be built from {data or movies}: {'; '.join(task_notes)}")
    if other := sorted({c.data for c in configs if Path(c.data).resolve() != Path(data).resolve()}):
        notes.append(f"questions come from {data}; runs trained on {', '.join(other)} are asked the same")
    for run, cfg in zip(runs, configs):
        if cfg.backbone != backbone:  # its rows differ from the frozen row by more than the method
            notes.append(f"{run} is built on backbone {cfg.backbone}, the frozen row is {backbone}")
        if (placed["dtype"] or cfg.dtype) != dtype:  # bf16 rounding alone moves log-likelihoods
            notes.append(f"{run} computes in {cfg.dtype}, the frozen row in {dtype} (the first run's)")
    for note in notes:
        log(f"note: {note}")
    n_questions = sum(len(qs) for qs in questions.values())

    rows = [backbone_row(backbone, dtype, device, questions, batch_size)]
    log(_timing(rows[-1], n_questions))
    for run in runs:
        for row in run_rows(run, questions, batch_size, seed, **placed):
            rows.append(row)
            log(_timing(row, n_questions))

    answers = {t: np.array([q.answer for q in qs]) for t, qs in questions.items()}
    summary = report.summarise(rows, answers, resamples, seed)
    result = {
        "backbone": backbone, "data": None if data is None else str(data),
        "movies": None if movies is None else str(movies), "n": n, "seed": seed, "resamples": resamples,
        "tasks": {t: {"n": len(qs), "template": TEMPLATES[t], "kinds": dict(Counter(q.kind for q in qs if q.kind))}
                  for t, qs in questions.items()},
        "notes": notes, "questions_file": "questions.json", "rows": summary,
    }
    write_json(out / "questions.json", {t: [q.to_dict() for q in qs] for t, qs in questions.items()})
    report.write_markdown(out / "probe.md", summary, notes, resamples)
    report.plot(summary, out / "probe.png")
    write_json(out / "probe.json", result)
    return result


def _timing(row, n_questions: int) -> str:
    return f"{row.name}: {row.seconds:.1f} s ({row.seconds / max(n_questions, 1):.3f} s/question)"
