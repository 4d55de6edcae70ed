"""`--report-to`: each validation's record reaches the trackers researchers watch long runs in
(accelerate's tracker classes); a missing package or an unknown name is one line before training."""

from __future__ import annotations

import json

import accelerate.utils
import pytest
from accelerate.tracking import LOGGER_TYPE_TO_CLASS

from cora.errors import CoraError
from cora.train.run import train_run

from llm_fixtures import tiny_config


class RecordingTracker:
    made: list["RecordingTracker"] = []

    def __init__(self, run_name, logging_dir=None):
        self.run_name, self.logging_dir = run_name, logging_dir
        self.config, self.logged, self.finished = None, [], False
        RecordingTracker.made.append(self)

    def start(self):
        self.started = True

    def store_init_configuration(self, values):
        self.config = values

    def log(self, values, step=None):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


def test_each_validation_reaches_the_tracker(tmp_path, monkeypatch):
    RecordingTracker.made = []
    monkeypatch.setitem(LOGGER_TYPE_TO_CLASS, "tensorboard", RecordingTracker)
    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: True)
    out = tmp_path / "run"
    train_run(tiny_config(tmp_path, max_steps=4, eval_every=2, report_to="tensorboard"), out, show_progress=False)
    (tracker,) = RecordingTracker.made
    assert tracker.run_name == "run" and tracker.logging_dir == str(out / "trackers")
    assert tracker.started and tracker.finished
    assert tracker.config["method"] == "cora" and tracker.config["report_to"] == "tensorboard"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [step for step, _ in tracker.logged] == [r["step"] for r in log] == [2, 4]
    for (_, values), record in zip(tracker.logged, log):
        assert values["valid_auc"] == record["valid_auc"] and values["loss"] == record["loss"]
        assert "step" not in values and all(isinstance(v, (int, float)) for v in values.values())


def test_a_missing_or_unknown_tracker_is_one_line_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    with pytest.raises(CoraError, match=r"--report-to tensorboard: the tensorboard package is not installed"):
        train_run(tiny_config(tmp_path, report_to="tensorboard"), tmp_path / "a", show_progress=False)
    with pytest.raises(CoraError, match="--report-to tensorbored: not a tracker; choose from"):
        train_run(tiny_config(tmp_path, report_to="tensorbored"), tmp_path / "b", show_progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_tensorboard_event_files_are_written_and_read_back(tmp_path):
    """The real tracker, offline: every validation's scalars are in RUN/trackers, at their steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train_run(tiny_config(tmp_path, max_steps=4, eval_every=2, report_to="tensorboard"), out, show_progress=False)
    events = EventAccumulator(str(out / "trackers" / "run"))  # <logging dir>/<run name>
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "valid_auc", "valid_uauc", "grad_norm", "samples_per_s", "skipped_steps",
            "peak_rss_mb"} <= tags
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    got = events.Scalars("valid_auc")
    assert [e.step for e in got] == [r["step"] for r in log] == [2, 4]
    assert [e.value for e in got] == pytest.approx([r["valid_auc"] for r in log], abs=1e-6)  # stored as fp32
