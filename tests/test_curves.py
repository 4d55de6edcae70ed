"""Validation curves from run logs (cora.eval.curves) and their plot: staged runs join their
stages, a stage taken from a donor reads the donor's log, a torn last line is skipped."""

from __future__ import annotations

import json

import pytest

from cora.errors import CoraError
from cora.eval.curves import run_curve
from cora.eval.plots import valid_curves_plot


def _log(folder, records, torn: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records) + ('{"step": 9' if torn else "")
    (folder / "log.jsonl").write_text(text)


def test_a_plain_run_and_a_torn_last_line(tmp_path):
    _log(tmp_path / "run", [{"step": 50, "valid_auc": 0.55}, {"step": 100, "valid_auc": 0.6}], torn=True)
    assert run_curve(tmp_path / "run") == {"steps": [50, 100], "valid": [0.55, 0.6], "loss": [None, None], "stage_starts": []}
    assert run_curve(tmp_path / "nothing-yet") == {"steps": [], "valid": [], "loss": [], "stage_starts": []}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "log.jsonl").write_text('oops\n{"step": 1, "valid_auc": 0.5}\n')
    with pytest.raises(CoraError, match="line 1 is not JSON"):
        run_curve(tmp_path / "bad")


def test_stages_join_and_a_reused_stage_reads_its_donor(tmp_path):
    donor = tmp_path / "tallrec"
    _log(donor, [{"step": 100, "valid_auc": 0.52}, {"step": 200, "valid_auc": 0.58}])
    run = tmp_path / "collm"
    (run / "stage-1-lora").mkdir(parents=True)
    (run / "stage-1-lora" / "train_summary.json").write_text(json.dumps({"reused_from": str(donor)}))
    _log(run / "stage-2-mapping", [{"step": 100, "valid_auc": 0.66}])
    c = run_curve(run)
    assert c == {"steps": [100, 200, 300], "valid": [0.52, 0.58, 0.66], "loss": [None, None, None],
                 "stage_starts": [(0, "lora"), (200, "mapping")], "shared_until": 200}
    fig = valid_curves_plot([{"method": "TALLRec", "curve": run_curve(donor)}, {"method": "CoLLM", "curve": c},
                             {"method": "empty", "curve": run_curve(tmp_path / "x")}], tmp_path / "curves.png")
    xs = {ln.get_label(): list(ln.get_xdata()) for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")}
    # The shared stage is drawn once, as the donor's line; CoLLM's starts at its last point.
    assert xs == {"TALLRec": [100, 200], "CoLLM": [200, 300]}
    assert (tmp_path / "curves.png").stat().st_size > 1000
    # A run that trained its own first stage shares nothing.
    own = tmp_path / "own"
    _log(own / "stage-1-lora", [{"step": 100, "valid_auc": 0.5}])
    _log(own / "stage-2-mapping", [{"step": 100, "valid_auc": 0.6}])
    assert "shared_until" not in run_curve(own) and run_curve(own)["steps"] == [100, 200]


def test_curves_table_lines_up_steps_and_names_the_best():
    from cora.eval.curves import curves_table

    curves = {"A": {"steps": [50, 100, 150], "valid": [0.6, 0.7, 0.7]},
              "B": {"steps": [100, 200], "valid": [0.55, 0.5]},
              "C": {"steps": [], "valid": []}}  # not validated yet: no line
    table = curves_table(curves).splitlines()
    assert table[0] == "| row | 50 | 100 | 150 | 200 | best (step) |"
    assert table[2] == "| A | 0.600 | 0.700 | 0.700 |  | 0.700 (100) |"  # the first best, as the loop keeps it
    assert table[3] == "| B |  | 0.550 |  | 0.500 | 0.550 (100) |" and len(table) == 4
    long = {"L": {"steps": list(range(10, 310, 10)), "valid": [k / 100 for k in range(30)]}}
    head = curves_table(long, max_columns=6).splitlines()[0]
    assert head == "| row | 10 | 70 | 130 | 180 | 240 | 300 | best (step) |"  # first, last, evenly between
    assert curves_table({"C": curves["C"]}) == ""


def test_curves_of_one_method_share_a_colour_and_no_two_rows_share_colour_and_style(tmp_path):
    from matplotlib.colors import to_hex

    c = {"steps": [50, 100], "valid": [0.6, 0.7]}
    labels = ["CoRA-MF reference", "CoRA-MF old", "CoRA-SAS reference"] + [f"M{k}" for k in range(10)]
    fig = valid_curves_plot([{"method": lab, "curve": c} for lab in labels], tmp_path / "c.png")
    drawn = {ln.get_label(): (to_hex(ln.get_color()), str(ln.get_linestyle()))
             for ln in fig.axes[0].get_lines() if ln.get_label() in labels}
    assert len(drawn) == 13 and len(set(drawn.values())) == 13  # 12 methods: more than one cycle of 10
    assert drawn["CoRA-MF reference"][0] == drawn["CoRA-MF old"][0] != drawn["CoRA-SAS reference"][0]
    assert drawn["CoRA-MF reference"][1] != drawn["CoRA-MF old"][1]
