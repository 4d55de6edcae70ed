"""What a person watching a command sees: one console set-up, one progress-bar style (rich; the
tqdm bars of transformers / huggingface_hub are switched off), one line per slow start-up phase,
and before each validation an estimate of its time.

* **Consoles** (:func:`make_console`): on a terminal, rich's own width; written to a file or a
  pipe (a log, ``cora experiment --jobs`` workers) lines are not cut at rich's default 80 columns:
  the console is :data:`LOG_WIDTH` wide and text is never wrapped (``COLUMNS`` still wins).
* **Bars** (:func:`progress_bar`, :func:`scoring_bar`): description, bar, done/total, elapsed,
  time left, a free ``info`` text. Rich allows one live display at a time, so a scoring bar opened
  while a training bar runs (validation) is a task on that bar, removed when done. Where the
  console is not a terminal a bar is invisible until it ends, so a long scoring also writes one
  line every :data:`LOG_EVERY_S` seconds (rows done, time left).
* **Phases** (:func:`phase`): "loading the backbone ...", "tokenising 33,891 prompts ..." on
  stderr as each slow start-up step begins, from the main process only (``accelerate launch``
  starts several).
* **Validation estimates** (:class:`ValidationClock`): the validation sample is the same rows at
  every validation, so the rows/s of the previous one (or of the logit calibration, which scores
  training prompts of the same template before the first) predicts the next one's time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

# Columns of a console that is not a terminal: wide enough for a training bar with its info text.
LOG_WIDTH = 200
# Seconds between the progress lines a scoring writes into a log (no live bar there).
LOG_EVERY_S = 60.0


def make_console(stderr: bool = False) -> Console:
    """A rich console; not on a terminal (a log file, a pipe): :data:`LOG_WIDTH` wide, text not
    wrapped, unless ``COLUMNS`` says otherwise."""
    c = Console(stderr=stderr)
    if not c.is_terminal and not os.environ.get("COLUMNS"):
        c.width = LOG_WIDTH
        c.soft_wrap = True
    return c


_err: Console | None = None


def err_console() -> Console:
    """The stderr console that progress, phases and estimates go to (stdout is for results)."""
    global _err
    if _err is None:
        _err = make_console(stderr=True)
    return _err


def is_main_process() -> bool:
    """Rank 0 of an ``accelerate launch`` (or torchrun) group, or a plain process; read from the
    launcher's environment so that asking does not set up accelerate's process state."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


def quiet_hf() -> None:
    """No tqdm bars from huggingface_hub / transformers (downloads, "Loading weights"): the
    commands show their own rich progress, and two styles in one log read badly."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub is imported
    import sys

    if "huggingface_hub" in sys.modules:  # imported already: its switch reads the env var no more
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def say(message: str) -> None:
    """One progress line on stderr (main process only)."""
    if is_main_process():
        err_console().print(message, highlight=False, markup=False)


def phase(message: str) -> None:
    """``message ...`` as a slow start-up step begins (loading the backbone, tokenising): one line,
    so a command that fails right after says what it was doing in two lines, not five."""
    say(f"{message} ...")


def duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '2 h 14 min'."""
    s = int(round(seconds))
    if s < 60:
        return f"{max(seconds, 0):.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class _Info(ProgressColumn):
    """The task's free ``info`` text ('' when it has none)."""

    def render(self, task) -> Text:
        return Text(str(task.fields.get("info", "")))


_live: list[Progress] = []  # the progress display that is running (rich allows one at a time)


@contextmanager
def progress_bar(enabled: bool = True, remaining: bool = True) -> Iterator[Progress]:
    """The one bar style: description, bar, done/total, elapsed, [time left], info text."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if remaining:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, _Info(), console=err_console(), disable=not enabled, transient=False) as bar:
        _live.append(bar)
        try:
            yield bar
        finally:
            _live.remove(bar)


@contextmanager
def scoring_bar(description: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Progress of scoring ``total`` rows; yields ``advance(rows)``. Inside a running bar (a
    validation during training) it is a task of that bar, removed when done; on a console that is
    not a terminal it writes a line every :data:`LOG_EVERY_S` seconds."""
    t0 = last = time.time()
    done = 0

    def log_line(bar: Progress) -> None:
        nonlocal last
        now = time.time()
        if not enabled or bar.console.is_terminal or now - last < LOG_EVERY_S or done >= total:
            return
        last = now
        left = (now - t0) / done * (total - done) if done else 0.0
        bar.console.print(f"{description}: {done:,}/{total:,} rows in {duration(now - t0)}, about "
                          f"{duration(left)} left", highlight=False, markup=False)

    def advancer(bar: Progress, task) -> Callable[[int], None]:
        def advance(rows: int) -> None:
            nonlocal done
            done += rows
            bar.advance(task, rows)
            log_line(bar)
        return advance

    if _live and not _live[-1].disable:
        bar = _live[-1]
        task = bar.add_task(description, total=total, visible=enabled)
        try:
            yield advancer(bar, task)
        finally:
            bar.remove_task(task)
        return
    with progress_bar(enabled) as bar:
        yield advancer(bar, bar.add_task(description, total=total))


class ValidationClock:
    """Says before each validation how many rows it scores and how long that should take, from
    the rows/s measured at the previous validation (the same rows each time) or, before the
    first, while calibrating; then measures this one."""

    def __init__(self, rows: int, enabled: bool):
        self.rows, self.enabled = rows, enabled and is_main_process()
        self.rate: float | None = None  # rows/s
        self.source = ""

    def measured(self, rows: int, seconds: float, source: str) -> None:
        if rows > 0 and seconds > 0:
            self.rate, self.source = rows / seconds, source

    def estimate(self) -> str:
        if self.rate is None:
            return "no estimate yet (nothing scored in this process before)"
        return f"about {duration(self.rows / self.rate)} at {self.rate:.1f} rows/s ({self.source})"

    def calibrating(self, rows: int):
        """Times the logit calibration (``rows`` training prompts scored like validation rows)."""
        return self._timed(rows, "measured while calibrating",
                           before=lambda: f"calibrating the Yes-logit offset on {rows:,} training prompts ...",
                           after=lambda: f"each validation scores {self.rows:,} rows: {self.estimate()}")

    def validation(self, step: int):
        """Around one validation: the estimate line before it, its own rate measured after it."""
        return self._timed(self.rows, "the previous validation's",
                           before=lambda: f"step {step}: validating on {self.rows:,} rows, {self.estimate()}")

    @contextmanager
    def _timed(self, rows: int, source: str, before, after=None) -> Iterator[None]:
        """Say ``before()``, run the block, keep its rows/s as the estimate, then say ``after()``."""
        if self.enabled:
            err_console().print(before(), highlight=False)
        t0 = time.time()
        yield
        self.measured(rows, time.time() - t0, source)
        if self.enabled and after is not None:
            err_console().print(after(), highlight=False)
