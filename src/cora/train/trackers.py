"""Experiment trackers for long runs: ``--report-to tensorboard`` (or wandb, mlflow, ...: any of
accelerate's tracker classes), written by the main process at every validation.

Each validation's log.jsonl record (loss, lr, valid metric, best, gradient norm, samples/s,
skipped steps, loss scale) goes to every tracker under the step it was taken at; the run's
settings are stored once. The run's own log.jsonl stays the record: a tracker is a window on it,
so choosing one changes no number and a run may resume with another (a placement setting). A
tracker whose package is missing is one line naming it, before training starts.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from cora.errors import CoraError


def tracker_names(report_to: str) -> list[str]:
    """``"tensorboard,wandb"`` -> the names, each checked against accelerate's trackers."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    names = [n.strip() for n in report_to.split(",") if n.strip() and n.strip() != "none"]
    if bad := [n for n in names if n not in LOGGER_TYPE_TO_CLASS]:
        raise CoraError(f"--report-to {bad[0]}: not a tracker; choose from {', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
    return names


def check_trackers(report_to: str) -> list[str]:
    """The named trackers, each existing and its package installed (one line otherwise)."""
    import accelerate.utils

    names = tracker_names(report_to)
    for name in names:
        if not getattr(accelerate.utils, f"is_{name}_available", lambda: True)():
            raise CoraError(f"--report-to {name}: the {name} package is not installed (pip install {name})")
    return names


class Trackers:
    """The trackers a run reports to (none: every call does nothing)."""

    def __init__(self, report_to: str, run_name: str, out: Path, config: dict):
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        self.open = []
        for name in check_trackers(report_to):
            cls = LOGGER_TYPE_TO_CLASS[name]
            kwargs = {"logging_dir": str(Path(out) / "trackers")} if "logging_dir" in inspect.signature(cls).parameters else {}
            tracker = cls(run_name, **kwargs)
            if hasattr(tracker, "start"):  # accelerate >= 1.x opens the writer / run here
                tracker.start()
            tracker.store_init_configuration({k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))})
            self.open.append(tracker)

    def log(self, record: dict, step: int) -> None:
        values = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                  and k != "step"}
        for tracker in self.open:
            tracker.log(values, step=step)

    def close(self) -> None:
        for tracker in self.open:
            tracker.finish()
        self.open = []
