"""What a person watching a command sees (cora.progress): one line per start-up phase, an estimate
before each validation, scoring progress in a log, MF's bar bounded by early stopping, one bar
style (no tqdm from transformers), lines not cut at 80 columns, and `cora --version`."""

from __future__ import annotations

import re

import cora.progress as progress
from cora import __version__
from cora.config import CFConfig
from cora.progress import ValidationClock, duration, make_console, progress_bar, scoring_bar

from helpers import main_in_process, run_cli
from llm_fixtures import tiny_backbone_folder, tiny_config


def test_version_prints_the_installed_version():
    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"cora {__version__} (cora-rec)", res.stdout + res.stderr


def test_a_training_says_each_start_up_phase_and_estimates_each_validation_before_it(tmp_path, capsys):
    from cora.train.run import train_run

    cfg = tiny_config(tmp_path)  # 200 training rows, a 45-row validation sample, a validation every 2 steps
    capsys.readouterr()  # (the fixture's own output: it saves the tiny backbone with transformers)
    train_run(cfg, tmp_path / "run")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    where = {key: next(i for i, line in enumerate(lines) if line.startswith(key)) for key in (
        f"loading the backbone {cfg.backbone} (fp32, cpu) ...",
        "tokenising 200 training and 45 validation prompts ...",
        "calibrating the Yes-logit offset on 64 training prompts ...",
        "each validation scores 45 rows: about ",
        "step 2: validating on 45 rows, about ",
        "step 2/6  loss",  # the validation's own result line (stderr is not a terminal here)
        "step 4: validating on 45 rows, about ",
    )}
    assert list(where.values()) == sorted(where.values()), err  # in this order: each estimate before its validation
    first = lines[where["step 2: validating on 45 rows, about "]]
    second = lines[where["step 4: validating on 45 rows, about "]]
    assert "(measured while calibrating)" in first and "(the previous validation's)" in second
    rate = float(re.search(r"at ([\d.]+) rows/s", second).group(1))
    assert rate > 0
    assert not any("Loading weights" in line or "it/s]" in line for line in lines), err  # no tqdm bar


def test_the_first_validation_without_calibration_says_it_has_no_estimate(tmp_path, capsys):
    from cora.train.run import train_run

    train_run(tiny_config(tmp_path, calibrate_logit=False, max_steps=2), tmp_path / "run")
    err = capsys.readouterr().err
    assert "step 2: validating on 45 rows, no estimate yet (nothing scored in this process before)" in err
    assert "calibrating" not in err


def test_validation_clock_estimates_from_the_previous_rate(monkeypatch):
    clock = ValidationClock(rows=3000, enabled=False)
    assert clock.estimate().startswith("no estimate yet")
    clock.measured(64, 2.0, "measured while calibrating")  # 32 rows/s
    assert clock.estimate() == "about 1 min 34 s at 32.0 rows/s (measured while calibrating)"
    clock.measured(3000, 7200.0, "the previous validation's")
    assert clock.estimate().startswith("about 2 h 00 min at 0.4 rows/s")
    assert (duration(4.26), duration(42), duration(125), duration(3 * 3600 + 61)) == ("4.3 s", "42 s", "2 min 05 s",
                                                                                     "3 h 01 min")


def test_scoring_in_a_log_writes_progress_lines_and_nests_in_a_running_bar(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)  # a line at every batch (60 s apart in real use)
    monkeypatch.setattr(progress, "_err", None)  # a console on this test's captured stderr
    with scoring_bar("validation", 10, True) as advance:
        for rows in (4, 4, 2):
            advance(rows)
    err = capsys.readouterr().err
    assert "validation: 4/10 rows in " in err and "validation: 8/10 rows in " in err and "left" in err
    assert "validation: 10/10 rows in" not in err  # the finished bar says that
    # Inside a training bar (rich allows one live display): a task of that bar, removed when done.
    with progress_bar(True) as bar:
        task = bar.add_task("train", total=5)
        with scoring_bar("validation", 3, True) as advance:
            advance(3)
            assert len(bar.tasks) == 2
        assert [t.id for t in bar.tasks] == [task]


def test_a_console_that_is_not_a_terminal_does_not_cut_lines_at_80_columns(monkeypatch, capsys):
    monkeypatch.delenv("COLUMNS", raising=False)
    console = make_console()
    assert not console.is_terminal and console.width == progress.LOG_WIDTH
    line = "x" * 150 + " end"
    console.print(line)
    assert capsys.readouterr().out.strip() == line  # one line, whole
    monkeypatch.setenv("COLUMNS", "100")
    assert make_console().width == 100  # COLUMNS still decides


def test_mf_bar_is_bounded_by_what_early_stopping_can_reach():
    from cora.cf.train import epoch_bound

    cfg = CFConfig(data="x", epochs=1000, patience=5)
    assert epoch_bound(cfg, {"auc": -1.0, "epoch": -1}, 0) == 5  # no epoch yet
    assert epoch_bound(cfg, {"auc": 0.7, "epoch": 47}, 48) == 53  # best at epoch 47 (0-based): ends after 53
    assert epoch_bound(CFConfig(data="x", epochs=50, patience=5), {"auc": 0.7, "epoch": 47}, 48) == 50  # the cap


def test_cf_train_shows_patience_in_its_bar(tmp_path, monkeypatch, capsys):
    from llm_fixtures import tiny_dataset

    data = tiny_dataset(tmp_path)
    code, out, err = main_in_process(monkeypatch, capsys, "cf", "train", "--data", data, "--out", tmp_path / "mf",
                                     "--epochs", 200, "--patience", 2)
    assert code == 0, err
    bar = [line for line in err.splitlines() if line.startswith("mf ")]
    assert bar, err
    done, total = map(int, re.search(r"(\d+)/(\d+)", bar[-1]).groups())
    assert done == total < 200 and re.search(r"no gain 2/2", bar[-1]), bar[-1]  # stopped by patience, as the bar said


def test_transformers_loading_bar_is_silenced(tmp_path, capfd):
    from cora.llm.backbone import load_backbone

    folder = tiny_backbone_folder(tmp_path)
    capfd.readouterr()
    progress.quiet_hf()
    load_backbone(str(folder), dtype="fp32", device="cpu")
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err, err


def test_evaluate_says_what_it_loads_and_scores(tmp_path, monkeypatch, capsys):
    from cora.train.run import train_run

    cfg = tiny_config(tmp_path, max_steps=2)
    train_run(cfg, tmp_path / "run", show_progress=False)
    capsys.readouterr()
    code, out, err = main_in_process(monkeypatch, capsys, "evaluate", tmp_path / "run", "--split", "test")
    assert code == 0, err
    assert f"loading the backbone {cfg.backbone}" in err and re.search(r"tokenising \d+ test prompts", err), err
    assert re.search(r"cora test .*━.* (\d+)/\1", err), err  # the scoring bar, finished


def test_recommend_says_what_it_loads_and_scores(tmp_path, monkeypatch, capsys):
    from cora.train.run import train_run

    cfg = tiny_config(tmp_path, max_steps=2)
    train_run(cfg, tmp_path / "run", show_progress=False)
    capsys.readouterr()
    code, out, err = main_in_process(monkeypatch, capsys, "recommend", tmp_path / "run", "--user", 3,
                                     "--k", 3, "--candidates", 12)
    assert code == 0, err
    assert f"loading the backbone {cfg.backbone}" in err, err
    # Its scoring bar, on stderr beside the table on stdout (this user has 9 unseen items of the tiny catalogue).
    assert re.search(r"cora scoring .*━.* (\d+)/\1", err) and "rank" in out, err
