"""`cora experiment` and `cora report`: rows run into one folder, finished rows are skipped,
results.md / results.json / plots are written from finished runs, bad files are one-line errors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from cora.config import CFConfig
from cora.errors import CoraError
from cora.eval.plots import bar_count, fig5_plot, modules_plot, text_vs_id_plot, warm_cold_plot
from cora.experiment.execute import run_experiment
from cora.experiment.spec import Experiment

from llm_fixtures import tiny_backbone_folder, tiny_dataset
from helpers import run_cli


def tiny_experiment(root, **over) -> dict:
    d = {
        "name": "tiny", "budget": "a few seconds", "data": str(tiny_dataset(root)), "out": str(root / "exp"),
        "test_limit": 60, "test_per_user": None,  # whole users: the tiny dataset has few
        "llm": {"backbone": str(tiny_backbone_folder(root)), "rank": 4, "alpha": 8.0, "gen_layers": 1, "gen_heads": 2,
                "gen_ffn": 32, "batch_size": 4, "eval_batch_size": 8, "max_steps": 4, "eval_every": 2,
                "warmup_steps": 1, "limit_valid": 30, "lr": 1e-2, "seed": 3},
        "cf": {"mf": {"model": "mf", "dim": 8, "epochs": 2, "patience": 2, "batch_size": 64}},
        "plots": ["warm_cold", "text_vs_id"],
        "rows": [{"name": "MF", "cf": "mf"}, {"name": "ICL", "method": "icl"},
                 {"name": "CoRA-MF", "label": "CoRA-MF", "method": "cora", "cf": "mf"},
                 {"name": "CoRA-MF ID-only", "label": "CoRA-MF", "method": "cora", "cf": "mf", "id_only": True}],
    }
    d.update(over)
    return d


def write_yaml(path, d):
    path.write_text(yaml.safe_dump(d))
    return path


def test_experiment_runs_rows_writes_results_and_skips_finished_rows(tmp_path):
    cfg = write_yaml(tmp_path / "exp.yaml", tiny_experiment(tmp_path))
    exp = Experiment.load(cfg)
    results = run_experiment(exp)
    assert [r["method"] for r in results["rows"]] == ["MF", "ICL", "CoRA-MF", "CoRA-MF ID-only"]
    assert results["missing"] == [] and results["key"] == "test-limit60"
    out = tmp_path / "exp"
    md = (out / "results.md").read_text()
    for name in ("| MF |", "| ICL |", "| CoRA-MF |", "| CoRA-MF ID-only |", "a few seconds"):
        assert name in md
    saved = json.loads((out / "results.json").read_text())
    cora_row = next(r for r in saved["rows"] if r["method"] == "CoRA-MF")
    assert cora_row["steps"] == 4 and 0 <= cora_row["auc"] <= 1
    assert (out / "warm_cold.png").stat().st_size > 1000 and (out / "text_vs_id.png").exists()
    # Every row folder holds the same test sample.
    ns = {r["method"]: r["n"] for r in saved["rows"]}
    assert len(set(ns.values())) == 1
    # Intervals on every row, differences to the first CoRA row (itself: exactly 0).
    assert saved["bootstrap"]["reference"] == "CoRA-MF" and saved["bootstrap"]["resamples"] == 1000
    for r in saved["rows"]:
        assert 0 <= r["auc_ci95"][0] <= r["auc_ci95"][1] <= 1 and r["vs_reference"]["row"] == "CoRA-MF"
    assert cora_row["vs_reference"]["delta_auc_ci95"] == [0.0, 0.0] and cora_row["vs_reference"]["p_delta_le_0"] == 1
    lo, hi = cora_row["auc_ci95"]
    assert f"| CoRA-MF | {cora_row['n']:,} | {cora_row['auc']:.4f} ± {(hi - lo) / 2:.4f} |" in md
    assert "| CoRA-MF - row, AUC [95 %], p |" in md
    assert sorted(p.name for p in (out / "predictions").iterdir()) == [
        "CoRA-MF-ID-only.parquet", "CoRA-MF.parquet", "ICL.parquet", "MF.parquet"]
    # Second run: nothing retrained.
    stamp = (out / "cora-mf" / "model.safetensors").stat().st_mtime_ns
    run_experiment(Experiment.load(cfg))
    assert (out / "cora-mf" / "model.safetensors").stat().st_mtime_ns == stamp


def test_experiment_takes_collm_first_stage_from_the_tallrec_row(tmp_path):
    d = tiny_experiment(tmp_path, plots=[])
    d["rows"] = [{"name": "TALLRec", "method": "tallrec"},
                 {"name": "CoLLM-MF", "method": "collm", "cf": "mf", "stage_from": {"lora": "TALLRec"}}]
    results = run_experiment(Experiment.load(write_yaml(tmp_path / "e.yaml", d)))
    assert [r["method"] for r in results["rows"]] == ["TALLRec", "CoLLM-MF"]
    summary = json.loads((tmp_path / "exp" / "collm-mf" / "train_summary.json").read_text())
    assert summary["stages"]["lora"]["reused_from"] == str(tmp_path / "exp" / "tallrec")
    assert not (tmp_path / "exp" / "collm-mf" / "stage-1-lora" / "log.jsonl").exists()
    assert "| CoLLM-MF | 8 steps; stage lora = TALLRec's |" in (tmp_path / "exp" / "results.md").read_text()


def test_seeded_rows_train_per_seed_and_report_mean_sd_and_intervals(tmp_path):
    d = tiny_experiment(tmp_path, plots=["warm_cold"], reference="MF")
    d["rows"] = [{"name": "MF", "cf": "mf"}, {"name": "CoRA-MF", "method": "cora", "cf": "mf", "seeds": [1, 2]}]
    results = run_experiment(Experiment.load(write_yaml(tmp_path / "e.yaml", d)))
    out = tmp_path / "exp"
    for s in (1, 2):
        assert yaml.safe_load((out / f"cora-mf-seed{s}" / "config.yaml").read_text())["seed"] == s
    assert not (out / "cora-mf").exists()
    row = results["rows"][1]
    per = [json.loads((out / f"cora-mf-seed{s}" / "metrics.json").read_text())["test-limit60"] for s in (1, 2)]
    assert [s["seed"] for s in row["seeds"]] == [1, 2] and [s["auc"] for s in row["seeds"]] == [p["auc"] for p in per]
    import numpy as np

    assert row["auc"] == pytest.approx(np.mean([p["auc"] for p in per]), abs=1e-6)
    assert row["auc_std"] == pytest.approx(np.std([p["auc"] for p in per], ddof=1), abs=1e-6)
    assert row["auc_ci95"][0] <= row["auc_ci95"][1] and row["seeds"][0]["auc_ci95"] is not None
    assert row["vs_reference"]["row"] == "MF" and row["vs_reference"]["delta_auc_ci95"] is not None
    md = (out / "results.md").read_text()
    assert "| MF - row, AUC [95 %], p |" in md and f"2 (sd {row['auc_std']:.4f} / {row['uauc_std']:.4f})" in md
    assert "| CoRA-MF | 4 steps x 2 seeds (1, 2) |" in md
    assert "Is MF better than each row?" in md and "| CoRA-MF | " in md.split("Is MF better")[1]
    curves = md.split("Valid AUC by step")[1]
    assert "| row | 2 | 4 | best (step) |" in curves and "| CoRA-MF seed 1 | " in curves and "| MF |" not in curves
    # The results folder alone rebuilds the same numbers: predictions/ + cora report --predictions.
    assert sorted(p.name for p in (out / "predictions").iterdir()) == [
        "CoRA-MF-seed1.parquet", "CoRA-MF-seed2.parquet", "MF.parquet"]
    from cora.eval.report import build_report

    rows, meta = build_report(None, [out / "predictions"], "test-limit60", reference="MF")
    assert [r["method"] for r in rows] == ["MF", "CoRA-MF"] and meta == results["bootstrap"]
    for got, want in zip(rows, results["rows"]):
        for key in ("auc", "uauc", "cold_auc", "auc_ci95", "uauc_ci95", "warm_auc_ci95", "vs_reference"):
            assert got[key] == want[key], key
    res = run_cli("report", "--predictions", out / "predictions", "--reference", "MF")
    assert res.returncode == 0 and "±" in res.stdout and "CoRA-MF" in res.stdout
    assert "split: test-limit60" in res.stdout  # the copied files say which test rows they score


def test_seeded_stage_from_takes_the_donor_run_of_the_same_seed(tmp_path, monkeypatch):
    import cora.train.run as run_mod

    calls = []
    monkeypatch.setattr(run_mod, "train_run", lambda cfg, out, resume, stage_from: calls.append(
        (cfg.seed, Path(out).name, {k: Path(v).name for k, v in stage_from.items()})))
    monkeypatch.setattr(run_mod, "evaluate_run", lambda *a, **k: None)
    d = tiny_experiment(tmp_path, plots=[])
    d["rows"] = [{"name": "TALLRec", "method": "tallrec", "seeds": [1, 2]},
                 {"name": "CoLLM", "method": "tallrec", "seeds": [2, 1], "stage_from": {"lora": "TALLRec"}}]
    run_experiment(Experiment.load(write_yaml(tmp_path / "e.yaml", d)))
    assert calls == [(1, "tallrec-seed1", {}), (2, "tallrec-seed2", {}),
                     (2, "collm-seed2", {"lora": "tallrec-seed2"}), (1, "collm-seed1", {"lora": "tallrec-seed1"})]


def test_capped_test_sample_is_the_same_rows_for_cf_and_llm_rows(tmp_path):
    d = tiny_experiment(tmp_path, plots=[], test_per_user=3)
    d["rows"] = [{"name": "MF", "cf": "mf"}, {"name": "ICL", "method": "icl"}]
    results = run_experiment(Experiment.load(write_yaml(tmp_path / "e.yaml", d)))
    assert results["key"] == "test-limit60-per3"
    import pandas as pd

    a = pd.read_parquet(tmp_path / "exp" / "cf-mf" / "predictions-test-limit60-per3.parquet")
    b = pd.read_parquet(tmp_path / "exp" / "icl" / "predictions-test-limit60-per3.parquet")
    assert a[["uid", "iid"]].equals(b[["uid", "iid"]]) and a["uid"].value_counts().max() == 3


def test_report_only_lists_unfinished_rows(tmp_path):
    d = tiny_experiment(tmp_path)
    d["rows"] = d["rows"][:1]
    exp = Experiment.load(write_yaml(tmp_path / "e.yaml", d))
    from cora.experiment.results import write_results

    assert write_results(exp)["missing"] == ["MF"]
    assert "Not finished: MF" in (tmp_path / "exp" / "results.md").read_text()


def test_committed_rows_carry_over_to_a_machine_without_the_run_folders(tmp_path):
    """Run folders are lost with a machine; the committed results folder is not. A row with no run
    folder comes back from results.json + predictions/ with the same numbers and intervals, unless
    its settings changed (stale: missing) or its committed predictions no longer reproduce it."""
    import shutil

    import pandas as pd

    from cora.experiment.results import write_results

    d = tiny_experiment(tmp_path, results=str(tmp_path / "results"), plots=["valid_curves"])
    d["rows"] = [{"name": "MF", "cf": "mf"}, {"name": "CoRA-MF", "method": "cora", "cf": "mf", "seeds": [1, 2]}]
    cfg = write_yaml(tmp_path / "e.yaml", d)
    first = run_experiment(Experiment.load(cfg))
    assert first["runs"]["CoRA-MF seed 2"]["settings"]["lr"] == 1e-2 and first["runs"]["CoRA-MF seed 2"]["settings"]["seed"] == 2
    shutil.rmtree(tmp_path / "exp")  # a fresh machine: the committed results folder only

    again = write_results(Experiment.load(cfg))
    assert again["missing"] == [] and [r.get("carried") for r in again["rows"]] == [True, [1, 2]]
    for a, b in zip(first["rows"], again["rows"]):
        for k in ("n", "auc", "uauc", "auc_ci95", "uauc_ci95", "vs_reference", "steps", "stopped", "settings"):
            assert a.get(k) == b.get(k), k
        assert [{**s, "carried": True} for s in a.get("seeds", [])] == b.get("seeds", [])
    assert again["curves"] == first["curves"] and again["curves"]["CoRA-MF seed 1"]["steps"]
    md = (tmp_path / "results" / "results.md").read_text()
    assert "Carried from the committed results" in md and "MF, CoRA-MF" in md
    assert (tmp_path / "results" / "valid_curves.png").exists()
    # Both rows name the CF weights they came from; weights that differ between rows are reported.
    assert again["rows"][0]["cf_sha256"] == again["rows"][1]["cf_sha256"] and "different CF weight" not in md
    saved = json.loads((tmp_path / "results" / "results.json").read_text())
    saved["runs"]["CoRA-MF seed 1"]["cf_sha256"] = "f" * 64
    (tmp_path / "results" / "results.json").write_text(json.dumps(saved))
    write_results(Experiment.load(cfg))
    assert "Rows on cf 'mf' were computed from 2 different CF weight files" in (
        tmp_path / "results" / "results.md").read_text()

    # A changed setting makes the committed row stale: reported missing, never carried.
    d["llm"]["lr"] = 5e-3
    stale = write_results(Experiment.load(write_yaml(tmp_path / "e.yaml", d)))
    assert stale["missing"] == ["CoRA-MF"] and [r["method"] for r in stale["rows"]] == ["MF"]

    # Committed predictions that no longer give the committed numbers: a one-line error naming the file.
    d["llm"]["lr"] = 1e-2
    run_experiment(Experiment.load(write_yaml(tmp_path / "e.yaml", d)))
    shutil.rmtree(tmp_path / "exp")
    path = tmp_path / "results" / "predictions" / "MF.parquet"
    df = pd.read_parquet(path)
    attrs = dict(df.attrs)
    df = df.iloc[:-3].copy()
    df.attrs = attrs
    df.to_parquet(path)
    with pytest.raises(CoraError, match=r"MF\.parquet: does not reproduce committed 'MF'"):
        write_results(Experiment.load(cfg))


def test_a_row_carried_from_another_experiments_results_is_compared_on_the_same_rows(tmp_path):
    """carry: {from, training}: a row whose one training is another experiment's committed training
    (Table 4's qkvo = Table 3's CoRA-MF seed 1): never trained here, its committed predictions
    re-checked, its settings compared with what this row asks (stale: missing, never carried)."""
    import shutil

    from cora.experiment.results import write_results

    a = tiny_experiment(tmp_path, results=str(tmp_path / "table3"), plots=["valid_curves"])
    a["rows"] = [{"name": "CoRA-MF", "method": "cora", "cf": "mf", "seeds": [1, 2]}]
    table3 = run_experiment(Experiment.load(write_yaml(tmp_path / "t3.yaml", a)))
    shutil.rmtree(tmp_path / "exp" / "cora-mf-seed1")  # only the committed copy of seed 1 remains
    b = tiny_experiment(tmp_path, out=str(tmp_path / "exp4"), cf_root=str(tmp_path / "exp"),
                        results=str(tmp_path / "table4"), plots=["valid_curves"], reference="CoRA-MF qkvo")
    b["llm"]["seed"] = 1
    b["rows"] = [{"name": "CoRA-MF qkvo", "method": "cora", "cf": "mf",
                  "carry": {"from": str(tmp_path / "table3"), "training": "CoRA-MF seed 1"}},
                 {"name": "CoRA-MF qk", "method": "cora", "cf": "mf", "modules": "qk"}]
    cfg = write_yaml(tmp_path / "t4.yaml", b)
    table4 = run_experiment(Experiment.load(cfg))
    assert not (tmp_path / "exp4" / "cora-mf-qkvo").exists()  # not trained here
    qkvo = table4["rows"][0]
    assert qkvo["carried"] is True and qkvo["auc"] == table3["runs"]["CoRA-MF seed 1"]["auc"]
    assert table4["curves"]["CoRA-MF qkvo"] == table3["curves"]["CoRA-MF seed 1"]
    assert table4["bootstrap"]["reference"] == "CoRA-MF qkvo" and "delta_auc_ci95" in table4["rows"][1]["vs_reference"]
    # Asking the carried row for other settings than it ran with: stale, reported missing.
    b["rows"][0]["lr"] = 5e-3
    stale = write_results(Experiment.load(write_yaml(tmp_path / "t4.yaml", b)))
    assert stale["missing"] == ["CoRA-MF qkvo"]
    with pytest.raises(CoraError, match=r"1 row\(s\) failed \(CoRA-MF qkvo\)"):
        run_experiment(Experiment.load(write_yaml(tmp_path / "t4.yaml", b)), only=["CoRA-MF qkvo"])
    assert "is not trained here" in (tmp_path / "exp4" / "errors.log").read_text()
    b["rows"][0]["carry"] = {"from": str(tmp_path / "table3")}
    with pytest.raises(CoraError, match=r"rows\[0\]: carry must be \{from: RESULTS_FOLDER, training: NAME\}"):
        Experiment.load(write_yaml(tmp_path / "t4.yaml", b))


def test_a_donor_stage_or_a_seed_finished_elsewhere_is_not_trained_again(tmp_path):
    """TALLRec trained on one machine gives CoLLM its LoRA stage on the next (results/stages/);
    one seed of a row committed from one machine, the other trained on the next, make one row."""
    import shutil

    d = tiny_experiment(tmp_path, results=str(tmp_path / "results"), plots=[])
    d["rows"] = [{"name": "TALLRec", "method": "tallrec"},
                 {"name": "CoLLM-MF", "method": "collm", "cf": "mf", "seeds": [1, 2], "stage_from": {"lora": "TALLRec"}}]
    cfg = write_yaml(tmp_path / "e.yaml", d)
    run_experiment(Experiment.load(cfg), only=["TALLRec"])
    kept = tmp_path / "results" / "stages" / "tallrec"
    assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "log.jsonl", "model.safetensors", "train_summary.json"]
    shutil.rmtree(tmp_path / "exp")  # the next machine
    # ... trained it on a GPU: the CoLLM row says both places, stage by stage.
    donor = json.loads((kept / "train_summary.json").read_text())
    (kept / "train_summary.json").write_text(json.dumps({**donor, "hardware": "NVIDIA H200 tf32"}))

    results = run_experiment(Experiment.load(cfg), only=["CoLLM-MF"])
    assert not (tmp_path / "exp" / "tallrec").exists()  # carried, not trained again
    summary = json.loads((tmp_path / "exp" / "collm-mf-seed1" / "train_summary.json").read_text())
    assert Path(summary["stages"]["lora"]["reused_from"]) == kept
    assert re.fullmatch(r"NVIDIA H200 tf32 \(lora\) \+ cpu x\d+ fp32 \(mapping\)", summary["hardware"])
    assert summary["hardware"] in (tmp_path / "results" / "results.md").read_text()  # the "trained on" column
    curve = results["curves"]["CoLLM-MF seed 1"]  # its first stage's points come from the kept log
    assert [name for _, name in curve["stage_starts"]][:1] == ["lora"] and len(curve["steps"]) == 4
    assert len(curve["loss"]) == 4 and all(loss > 0 for loss in curve["loss"])
    assert results["missing"] == [] and results["rows"][0]["carried"] is True
    # A donor's run folder brought back as records only (no weights, as scripts/gpu_table.sh packs
    # it) is no donor: the kept stage is.
    from cora.experiment.execute import donor_dir

    exp = Experiment.load(cfg)
    records = tmp_path / "exp" / "tallrec"
    records.mkdir()
    for f in ("config.yaml", "train_summary.json"):
        shutil.copyfile(kept / f, records / f)
    assert donor_dir(exp, exp.plan.training("TALLRec")) == kept
    shutil.rmtree(records)

    # Seed 1 finished on a machine, seed 2 not yet: the row waits, seed 1 is kept for the next.
    saved = json.loads((tmp_path / "results" / "results.json").read_text())
    del saved["runs"]["CoLLM-MF seed 2"]
    saved["rows"] = saved["rows"][:1]
    (tmp_path / "results" / "results.json").write_text(json.dumps(saved))
    (tmp_path / "results" / "predictions" / "CoLLM-MF-seed2.parquet").unlink()
    shutil.rmtree(tmp_path / "exp")
    from cora.experiment.results import write_results

    partial = write_results(Experiment.load(cfg))
    assert partial["missing"] == ["CoLLM-MF"] and "CoLLM-MF seed 1" in partial["runs"]
    results = run_experiment(Experiment.load(cfg), only=["CoLLM-MF"])
    assert not (tmp_path / "exp" / "collm-mf-seed1").exists() and (tmp_path / "exp" / "collm-mf-seed2").exists()
    row = results["rows"][1]
    assert row["method"] == "CoLLM-MF" and row["carried"] == [1] and [s["seed"] for s in row["seeds"]] == [1, 2]


def test_a_kept_cf_run_is_restored_on_a_machine_without_it_not_trained_again(tmp_path):
    """keep_cf: the finished CF run goes to cf_store (a repository folder); a machine without the run
    folder restores it, so rows there score with the same weights; a kept run of other settings is
    neither restored nor overwritten."""
    import shutil

    from cora.io import sha256_file

    store = tmp_path / "weights"
    d = tiny_experiment(tmp_path, keep_cf=["mf"], cf_store=str(store), rows=[{"name": "MF", "cf": "mf"}])
    cfg = write_yaml(tmp_path / "e.yaml", d)
    first = run_experiment(Experiment.load(cfg))
    kept = store / "cf-mf"
    assert {"config.yaml", "model.safetensors", "metrics.json", "log.jsonl"} <= {f.name for f in kept.iterdir()}
    assert not (kept / "checkpoint").exists()
    sha = sha256_file(kept / "model.safetensors")
    assert sha == sha256_file(tmp_path / "exp" / "cf-mf" / "model.safetensors")
    log_before = (kept / "log.jsonl").read_text()

    shutil.rmtree(tmp_path / "exp")  # the next machine: the store only
    again = run_experiment(Experiment.load(cfg))
    run = tmp_path / "exp" / "cf-mf"
    assert sha256_file(run / "model.safetensors") == sha and (run / "log.jsonl").read_text() == log_before
    assert again["rows"][0]["auc"] == first["rows"][0]["auc"]

    # Other settings: trained anew (another model), and the kept run stays the one it was.
    shutil.rmtree(tmp_path / "exp")
    d["cf"]["mf"]["dim"] = 6
    run_experiment(Experiment.load(write_yaml(tmp_path / "e.yaml", d)))
    assert sha256_file(run / "model.safetensors") != sha and sha256_file(kept / "model.safetensors") == sha
    assert CFConfig.load(kept / "config.yaml").dim == 8


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(colour="red"), "unknown field(s) colour"),
    (lambda d: d.pop("rows"), "missing field 'rows'"),
    (lambda d: d["rows"].append({"name": "MF", "cf": "mf"}), "duplicate row name 'MF'"),
    (lambda d: d["rows"].append({"name": "X", "method": "cora", "cf": "lgcn"}), "cf 'lgcn' is not defined"),
    (lambda d: d["rows"].append({"name": "Y", "method": "cora", "rnak": 3}), "unknown field(s) rnak"),
    (lambda d: d.update(plots=["pie"]), "unknown plot(s) pie"),
    (lambda d: d["rows"].append({"name": "Z"}), "needs a 'method'"),
    (lambda d: d["rows"].insert(0, {"name": "C", "method": "collm", "cf": "mf", "stage_from": {"lora": "ICL"}}),
     "stage_from lora: 'ICL' must be an LLM row listed before 'C'"),
    (lambda d: d["rows"].append({"name": "C", "method": "collm", "cf": "mf", "stage_from": {"lora": "MF"}}),
     "'MF' must be an LLM row"),
    (lambda d: d["rows"].append({"name": "C", "method": "collm", "cf": "mf", "stage_from": "ICL"}),
     "stage_from must map a stage to an earlier row"),
    (lambda d: d.update(reference="TALLRec"), "reference 'TALLRec' is not a row name"),
    (lambda d: d.update(keep_cf=["sasrec"], cf_store="w"), "keep_cf: 'sasrec' is not defined under 'cf'"),
    (lambda d: d.update(keep_cf=["mf"]), "keep_cf needs cf_store"),
    (lambda d: d.update(keep_cf="mf", cf_store="w"), "field 'keep_cf' = 'mf': must be a list"),
    (lambda d: d["rows"][0].update(seeds=[1, 2]), "rows[0]: seeds are for LLM rows"),
    (lambda d: d["rows"][1].update(seeds=[1, 1]), "seeds must be a list of distinct integers"),
    (lambda d: d["rows"][1].update(seeds=3), "seeds must be a list of distinct integers"),
    (lambda d: d["rows"][1].update(seeds=[1], seed=2), "give seed or seeds, not both"),
    (lambda d: d["rows"].extend([{"name": "T", "method": "tallrec", "seeds": [2]},
                                 {"name": "C", "method": "collm", "cf": "mf", "seeds": [1], "stage_from": {"lora": "T"}}]),
     "stage_from lora: 'T' has no run with seed 1 (its seeds: [2]); give 'T' seeds: [1] too"),
    (lambda d: d["rows"].extend([{"name": "T", "method": "tallrec", "seeds": [1]},
                                 {"name": "C", "method": "collm", "cf": "mf", "stage_from": {"lora": "T"}}]),
     "'T' is trained once per seed; give 'C' seeds too"),
])
def test_bad_experiment_files_are_one_line_errors(tmp_path, change, message):
    d = tiny_experiment(tmp_path)
    change(d)
    with pytest.raises(CoraError, match=re.escape(message)):
        Experiment.load(write_yaml(tmp_path / "bad.yaml", d))


def test_cli_experiment_error_is_one_line(tmp_path):
    d = tiny_experiment(tmp_path)
    d["plots"] = ["pie"]
    res = run_cli("experiment", write_yaml(tmp_path / "b.yaml", d))
    assert res.returncode == 1
    assert len(res.stderr.strip().splitlines()) == 1 and "unknown plot(s) pie" in res.stderr


ROWS = [
    {"method": "A", "label": "A", "no_titles": False, "modules": "qkvo", "auc": 0.7, "uauc": 0.65,
     "warm_auc": 0.72, "cold_auc": 0.6},
    {"method": "A ID", "label": "A", "id_only": True, "modules": "qk", "auc": 0.68, "uauc": 0.6,
     "warm_auc": 0.7, "cold_auc": None},
    {"method": "B", "label": "B", "no_titles": False, "modules": "qkv", "auc": 0.6, "uauc": 0.55,
     "warm_auc": 0.61, "cold_auc": 0.52},
]


def test_plots_hold_the_right_number_of_bars(tmp_path):
    assert bar_count(warm_cold_plot(ROWS, tmp_path / "wc.png")) == 6   # 3 methods x (warm, cold)
    assert bar_count(text_vs_id_plot(ROWS, tmp_path / "tid.png")) == 4  # 2 labels x (text, ID-only)
    assert bar_count(modules_plot(ROWS, tmp_path / "m.png")) == 6       # 3 module sets x (AUC, UAUC)
    assert bar_count(fig5_plot(ROWS, tmp_path / "f5.png")) == 12        # (AUC, UAUC) x (warm, cold) x 3 methods
    for name in ("wc.png", "tid.png", "m.png", "f5.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_plot_labels_sit_above_the_whiskers_and_a_cut_axis_says_where_it_starts(tmp_path):
    from cora.eval.plots import error_bars

    rows = [dict(r, warm_auc_ci95=[r["warm_auc"] - 0.1, r["warm_auc"] + 0.05],
                 cold_auc_ci95=None if r["cold_auc"] is None else [r["cold_auc"] - 0.12, r["cold_auc"] + 0.08])
            for r in ROWS]
    fig = warm_cold_plot(rows, tmp_path / "wc.png")
    ax = fig.axes[0]
    labels = [(t.get_text(), t.xy) for t in ax.texts]
    values = [r[m] for m in ("warm_auc", "cold_auc") for r in rows if r[m] is not None]
    assert sorted(text for text, _ in labels) == sorted(f"{v:.3f}" for v in values)  # one label per bar
    whisker_tops = sorted(hi for _, hi in error_bars(fig))
    # Every label is anchored at the top of its bar's whisker (above it, offset upwards), never inside the bar.
    assert sorted(round(y, 9) for _, (_, y) in labels) == sorted(round(t, 9) for t in whisker_tops)
    bottom, top = ax.get_ylim()
    assert bottom == pytest.approx(0.35) and ax.get_ylabel() == "AUC (axis starts at 0.35, not 0)"
    assert top > max(whisker_tops) + 0.05  # room for the labels above the highest whisker
    assert "chance (0.5)" in [t.get_text() for t in ax.get_legend().get_texts()]
    low = [dict(r, warm_auc=0.03, cold_auc=0.02, warm_auc_ci95=None, cold_auc_ci95=None) for r in ROWS]
    assert warm_cold_plot(low, tmp_path / "low.png").axes[0].get_ylabel() == "AUC"  # from 0: nothing to say


def test_report_cli_compares_runs_on_one_split(tmp_path):
    d = tiny_experiment(tmp_path)
    d["rows"] = d["rows"][:2]
    run_experiment(Experiment.load(write_yaml(tmp_path / "e.yaml", d)))
    runs = [tmp_path / "exp" / "cf-mf", tmp_path / "exp" / "icl"]
    res = run_cli("report", *runs, "--split", "test-limit60", "--out", tmp_path / "r.md", "--plot", "warm_cold")
    assert res.returncode == 0, res.stderr
    md = (tmp_path / "r.md").read_text()
    assert "| MF |" in md and "| ICL (zero-shot) |" in md
    assert (tmp_path / "warm_cold.png").exists()
    # Intervals in the printed table; no CoRA row, so the first row is the reference.
    assert "±" in res.stdout and "| MF - row, AUC [95 %], p |" in md and "(reference)" in md
    res = run_cli("report", *runs, "--split", "test-limit60", "--reference", "ICL (zero-shot)",
                  "--out", tmp_path / "r.md")
    assert res.returncode == 0 and "| ICL (zero-shot) - row, AUC [95 %], p |" in (tmp_path / "r.md").read_text()
    # A run scored on other test rows is refused, naming both predictions files.
    import pandas as pd

    pred_path = runs[1] / "predictions-test-limit60.parquet"
    pred = pd.read_parquet(pred_path)
    pred.loc[0, "iid"] += 1000
    pred.to_parquet(pred_path)
    res = run_cli("report", *runs, "--split", "test-limit60")
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert f"{pred_path} ({len(pred)} rows) was scored on other rows than {runs[0]}" in res.stderr
    pred_path.write_bytes(b"not parquet")
    res = run_cli("report", *runs, "--split", "test-limit60")
    assert res.returncode == 1 and f"{pred_path}: not a readable predictions parquet" in res.stderr
    res = run_cli("report", runs[0], "--split", "valid-limit5")
    assert res.returncode == 1 and "no metrics for split 'valid-limit5'" in res.stderr


SHIPPED = sorted(p.stem for p in (Path(__file__).parents[1] / "experiments").glob("*.yaml"))


def test_every_shipped_experiment_file_is_checked():
    assert {"ml1m-table3", "ml1m-cpu", "ml1m-curves", "ml1m-probe"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_experiment_files_validate_and_state_a_budget(name):
    exp = Experiment.load(Path(__file__).parents[1] / "experiments" / f"{name}.yaml")
    assert exp.budget, "every shipped experiment prints its budget into results.md"
    if name.startswith("ml1m-table3"):  # Table 3: all 14 rows of the paper
        assert len(exp.rows) == 14


def test_a_limited_test_sample_caps_rows_per_user_by_default(tmp_path):
    d = tiny_experiment(tmp_path)
    del d["test_per_user"]
    exp = Experiment.load(write_yaml(tmp_path / "e.yaml", d))
    assert (exp.per_user, exp.key) == (10, "test-limit60-per10")
    d.update(test_limit=None)
    assert Experiment.load(write_yaml(tmp_path / "e.yaml", d)).key == "test"  # no sample, no cap


def test_seeded_rows_share_one_unseeded_donor(tmp_path):
    """CoLLM-MF's seeds may all start from one TALLRec run (issue 16 allows it; the summary keeps
    the donor's seed)."""
    d = tiny_experiment(tmp_path, plots=[])
    d["rows"] = [{"name": "T", "method": "tallrec"},
                 {"name": "C", "method": "collm", "cf": "mf", "seeds": [1, 2], "stage_from": {"lora": "T"}}]
    exp = Experiment.load(write_yaml(tmp_path / "e.yaml", d))
    run_experiment(exp)
    for seed in (1, 2):
        stage = json.loads((tmp_path / "exp" / f"c-seed{seed}" / "stage-1-lora" / "train_summary.json").read_text())
        assert stage["reused_from"] == str(tmp_path / "exp" / "t") and stage["donor_seed"] == 3
    table = (tmp_path / "exp" / "results.md").read_text()
    assert "| T | 4 steps | cap (best " in table  # why each row stopped: the step cap here
    assert table.count("lora: taken from t; mapping: cap (best ") == 2  # one per seed


def test_results_can_go_to_their_own_folder(tmp_path):
    """results: a committed folder gets the table, the JSON and the predictions; runs stay in out."""
    d = tiny_experiment(tmp_path, results=str(tmp_path / "published"), plots=[])
    d["rows"] = d["rows"][:2]
    run_experiment(Experiment.load(write_yaml(tmp_path / "e.yaml", d)))
    published = tmp_path / "published"
    assert {"results.md", "results.json", "predictions"} <= {p.name for p in published.iterdir()}
    assert sorted(p.name for p in (published / "predictions").iterdir()) == ["ICL.parquet", "MF.parquet"]
    assert not (tmp_path / "exp" / "results.md").exists() and (tmp_path / "exp" / "cf-mf").is_dir()


def test_parallel_jobs_plan_dependencies_and_match_the_sequential_run(tmp_path):
    """--jobs N: every training a task (CF models, each seed), started after its CF model and its
    stage donor; the results equal a sequential run's bit for bit (same run folders, same code)."""
    from cora.experiment.parallel import parse_task, plan_tasks as plan

    d = tiny_experiment(tmp_path, plots=[], reference="MF")
    d["rows"] = [{"name": "MF", "cf": "mf"}, {"name": "TALLRec", "method": "tallrec"},
                 {"name": "CoLLM-MF", "method": "collm", "cf": "mf", "seeds": [1, 2], "stage_from": {"lora": "TALLRec"}},
                 {"name": "CoRA-MF", "method": "cora", "cf": "mf"}]
    exp = Experiment.load(write_yaml(tmp_path / "e.yaml", d))
    tasks = {t.name: t.needs for t in plan(exp)}
    assert list(tasks) == ["cf:mf", "TALLRec", "CoLLM-MF#1", "CoLLM-MF#2", "CoRA-MF"]
    assert tasks["CoLLM-MF#2"] == ["cf:mf", "TALLRec"] and tasks["CoRA-MF"] == ["cf:mf"] and tasks["TALLRec"] == []
    # --only a consumer still plans its donor and CF model first.
    assert [t.name for t in plan(exp, ["CoLLM-MF"])] == ["cf:mf", "TALLRec", "CoLLM-MF#1", "CoLLM-MF#2"]
    with pytest.raises(CoraError, match="row 'CoLLM-MF' has no seed 7"):
        parse_task(exp, "CoLLM-MF#7")
    with pytest.raises(CoraError, match="is seeded; name one seed"):
        parse_task(exp, "CoLLM-MF")

    seq = run_experiment(exp)
    par_yaml = write_yaml(tmp_path / "p.yaml", {**d, "out": str(tmp_path / "par")})
    res = run_cli("experiment", par_yaml, "--jobs", "3")
    assert res.returncode == 0, res.stdout + res.stderr
    par = json.loads((tmp_path / "par" / "results.json").read_text())
    assert par["missing"] == []
    for a, b in zip(seq["rows"], par["rows"]):
        assert (a["method"], a["auc"], a["uauc"]) == (b["method"], b["auc"], b["uauc"])
    summary = json.loads((tmp_path / "par" / "collm-mf-seed2" / "train_summary.json").read_text())
    assert summary["stages"]["lora"]["reused_from"] == str(tmp_path / "par" / "tallrec")
    assert (tmp_path / "par" / "logs" / "CoLLM-MF-seed2.log").exists()
    assert "| cpu x" in (tmp_path / "par" / "results.md").read_text()  # where each row trained


def test_a_deadline_stops_running_trainings_which_resume_later(tmp_path):
    d = tiny_experiment(tmp_path, plots=[], rows=[{"name": "ICL", "method": "icl"},
                                                   {"name": "TALLRec", "method": "tallrec"}])
    d["llm"] = {**d["llm"], "max_steps": 100_000, "eval_every": 20, "patience": 100_000}
    cfg = write_yaml(tmp_path / "e.yaml", d)
    res = run_cli("experiment", cfg, "--jobs", "2", "--deadline-min", "0.5")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "TALLRec: stopped" in res.stdout and "not finished" in res.stdout and "ICL: done" in res.stdout
    assert (tmp_path / "exp" / "tallrec" / "checkpoint").exists()  # resumable
    # --status reads where each training stands from the folders alone.
    res = run_cli("experiment", cfg, "--status", env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0, res.stdout + res.stderr
    lines = {line.split("│")[1].strip(): line for line in res.stdout.splitlines() if line.count("│") > 3}
    assert "finished" in lines["ICL"]
    step = json.loads((tmp_path / "exp" / "tallrec" / "checkpoint" / "state.json").read_text())["state"]["step"]
    assert "training" in lines["TALLRec"] and f"{step}/100000" in lines["TALLRec"]
    assert "backbone-llama cpu fp32" in lines["TALLRec"]  # where it computes, as planned
    # Time to the cap: hours on a slow machine, minutes on a fast one (291 samples/s gave "22 min").
    assert re.search(r"│\s*\d+(\.\d)? (h|min)\s*│\s*$", lines["TALLRec"]), lines["TALLRec"]
    res = run_cli("experiment", cfg, "--deadline-min", "1")
    assert res.returncode == 1 and "--deadline-min needs --jobs" in res.stdout + res.stderr


def test_sigterm_to_the_runner_stops_its_workers(tmp_path):
    """`kill RUNNER` must not orphan the workers (each runs in its own process group, so a signal
    to the runner alone does not reach them): they are stopped and keep their checkpoints."""
    import signal
    import subprocess
    import sys
    import time

    d = tiny_experiment(tmp_path, plots=[], rows=[{"name": "TALLRec", "method": "tallrec"}])
    d["llm"] = {**d["llm"], "max_steps": 100_000, "eval_every": 20, "patience": 100_000}
    cfg = write_yaml(tmp_path / "e.yaml", d)
    runner = subprocess.Popen([sys.executable, "-m", "cora", "experiment", str(cfg), "--jobs", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    ckpt = tmp_path / "exp" / "tallrec" / "checkpoint"
    end = time.time() + 120
    while not ckpt.exists() and time.time() < end and runner.poll() is None:
        time.sleep(0.5)
    assert ckpt.exists(), runner.communicate()[0]
    worker = subprocess.run(["pgrep", "-f", f"{cfg} --task TALLRec"], capture_output=True, text=True).stdout.split()
    assert len(worker) == 1, [l for l in subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines() if "cora" in l]
    runner.send_signal(signal.SIGTERM)
    out = runner.communicate(timeout=60)[0]
    assert runner.returncode == 128 + signal.SIGTERM and "SIGTERM: stopping the running trainings" in out
    with pytest.raises(ProcessLookupError):  # stopped and reaped, not left training
        os.kill(int(worker[0]), 0)
    assert ckpt.exists()


def test_a_failed_training_skips_what_needs_it_and_fails_the_command(tmp_path):
    d = tiny_experiment(tmp_path, plots=[])
    d["rows"] = [{"name": "MF", "cf": "mf"},
                 {"name": "TALLRec", "method": "tallrec", "backbone": str(tmp_path / "no-such-model")},
                 {"name": "CoLLM-MF", "method": "collm", "cf": "mf", "stage_from": {"lora": "TALLRec"}}]
    res = run_cli("experiment", write_yaml(tmp_path / "e.yaml", d), "--jobs", "2")
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "TALLRec: failed" in out and "CoLLM-MF: skipped" in out
    assert "1 training(s) failed (TALLRec)" in out and "Traceback" not in out
    assert "no-such-model" in (tmp_path / "exp" / "logs" / "TALLRec.log").read_text()
    assert json.loads((tmp_path / "exp" / "results.json").read_text())["rows"][0]["method"] == "MF"
