"""`cora experiment CONFIG.yaml`: a list of rows (CF model or LLM method + options) on one
dataset / backbone / budget, run one after another into one folder, then one results table and
the paper's plots.

Resumable by construction: every row is its own run folder; a finished row (trained and
evaluated on the experiment's test key) is skipped, an interrupted one resumes from its last
checkpoint. A failing row is reported and the others still run.

Config (YAML)::

    name: ml1m-table3
    budget: "CPU, 2 cores: about N hours"      # printed in results.md
    data: runs/ml1m                            # dataset folder
    source: ../shared/data/collm-ml-1m.zip     # optional: imported into `data` when absent
    out: runs/experiments/ml1m-table3
    test_limit: 1500                           # whole-user test sample of ~N rows; null = all
    test_per_user: 10                          # optional: at most N rows of each drawn user
    llm: {backbone: smollm2-135m, max_steps: 600, ...}   # LLMConfig fields for every LLM row
    cf: {mf: {model: mf}, sasrec: {model: sasrec}}     # CF runs by key (CFConfig fields)
    plots: [warm_cold, text_vs_id, modules]
    rows:
      - {name: MF, cf: mf}                              # a CF row: no method
      - {name: CoRA-MF, method: cora, cf: mf}           # an LLM row; any LLMConfig field may follow
      - {name: CoLLM-MF, method: collm, cf: mf, stage_from: {lora: TALLRec}}
        # stage_from: take a stage from an EARLIER row that trained exactly it (CoLLM's and
        # BinLLM's first stage is TALLRec) instead of training it again
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from cora.config import CFConfig, LLMConfig
from cora.data.sampling import split_key
from cora.errors import CoraError
from cora.eval.plots import PLOTS
from cora.eval.report import markdown_table, report_rows
from cora.io import atomic_path, read_json, read_yaml_mapping, write_json

console = Console(stderr=True)
ROW_KEYS = {"name", "cf", "method", "label", "stage_from"}


@dataclass
class Experiment:
    name: str
    data: str
    out: str
    rows: list[dict]
    budget: str = ""
    source: str | None = None
    test_limit: int | None = None
    test_per_user: int | None = None  # with test_limit: at most N rows per drawn user
    llm: dict = field(default_factory=dict)
    cf: dict = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return split_key("test", self.test_limit, self.test_per_user)

    @classmethod
    def load(cls, path: str | Path) -> "Experiment":
        path = Path(path)
        d = read_yaml_mapping(path, "experiment")
        known = set(cls.__dataclass_fields__)
        if unknown := sorted(set(d) - known):
            raise CoraError(f"{path}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        for required in ("name", "data", "out", "rows"):
            if required not in d:
                raise CoraError(f"{path}: missing field '{required}'")
        exp = cls(**d)
        exp.validate(path)
        return exp

    def validate(self, source: Path) -> None:
        LLMConfig.from_dict(self.llm, source=f"{source}: llm")
        for key, spec in self.cf.items():
            CFConfig.for_model(spec.get("model", key), **{k: v for k, v in spec.items() if k != "model"})
        names = set()
        for i, row in enumerate(self.rows):
            where = f"{source}: rows[{i}]"
            if "name" not in row:
                raise CoraError(f"{where}: missing 'name'")
            if row["name"] in names:
                raise CoraError(f"{where}: duplicate row name '{row['name']}'")
            names.add(row["name"])
            if row.get("cf") is not None and row["cf"] not in self.cf:
                raise CoraError(f"{where}: cf '{row['cf']}' is not defined under 'cf' (have: {', '.join(self.cf)})")
            if "method" not in row and "cf" not in row:
                raise CoraError(f"{where}: a row needs a 'method' (LLM row) or a 'cf' (CF row)")
            if "method" in row:
                LLMConfig.from_dict(self._llm_fields(row), source=where)
            if not isinstance(row.get("stage_from") or {}, dict):
                raise CoraError(f"{where}: stage_from must map a stage to an earlier row, e.g. {{lora: TALLRec}}")
            for stage, donor in (row.get("stage_from") or {}).items():
                if donor not in names - {row["name"]} or "method" not in self._row(donor):
                    raise CoraError(f"{where}: stage_from {stage}: '{donor}' must be an LLM row listed before "
                                    f"'{row['name']}'")
        if self.test_per_user is not None and self.test_limit is None:
            raise CoraError(f"{source}: test_per_user goes with test_limit (it caps the rows per user of a sample)")
        if unknown := sorted(set(self.plots) - set(PLOTS)):
            raise CoraError(f"{source}: unknown plot(s) {', '.join(unknown)} (choose from {', '.join(PLOTS)})")

    # ------------------------------------------------------------------ paths and configs
    def _row(self, name: str) -> dict:
        return next(r for r in self.rows if r["name"] == name)

    def row_dir(self, row: dict) -> Path:
        if "method" not in row:
            return self.cf_dir(row["cf"])
        return Path(self.out) / re.sub(r"[^A-Za-z0-9_.-]+", "-", row["name"]).strip("-").lower()

    def cf_dir(self, key: str) -> Path:
        return Path(self.out) / f"cf-{key}"

    def _llm_fields(self, row: dict) -> dict:
        d = {**self.llm, **{k: v for k, v in row.items() if k not in ROW_KEYS}}
        d.update(data=self.data, method=row["method"])
        if row.get("cf"):
            d["cf"] = str(self.cf_dir(row["cf"]))
        return d


def _ensure_data(exp: Experiment) -> None:
    if (Path(exp.data) / "meta.json").exists():
        return
    if not exp.source:
        raise CoraError(f"{exp.data}: dataset folder not found and no 'source' to import it from")
    from cora.data.collm_import import import_collm

    console.print(f"[bold]importing[/] {exp.source} -> {exp.data}")
    import_collm(exp.source, exp.data, trust_pickle=True)  # the experiment file names a trusted copy


def _run_cf(exp: Experiment, key: str) -> Path:
    from cora.cf.train import evaluate_cf_run, train_cf

    out = exp.cf_dir(key)
    spec = dict(exp.cf[key])
    cfg = CFConfig.for_model(spec.pop("model", key), data=exp.data, **spec)
    train_cf(cfg, out, resume=True)
    if exp.key not in read_json(out / "metrics.json"):
        evaluate_cf_run(out, "test", exp.test_limit, exp.test_per_user)
    return out


def _run_llm(exp: Experiment, row: dict) -> Path:
    from cora.train.run import evaluate_run, train_run

    out = exp.row_dir(row)
    if row.get("cf"):
        _run_cf(exp, row["cf"])
    cfg = LLMConfig.from_dict(exp._llm_fields(row), source=row["name"])
    stage_from = {stage: exp.row_dir(exp._row(donor)) for stage, donor in (row.get("stage_from") or {}).items()}
    if not (out / "train_summary.json").exists():
        train_run(cfg, out, resume=(out / "config.yaml").exists(), stage_from=stage_from)
    metrics = read_json(out / "metrics.json") if (out / "metrics.json").exists() else {}
    if exp.key not in metrics:
        evaluate_run(out, "test", exp.test_limit, per_user=exp.test_per_user)
    return out


def run_experiment(exp: Experiment, only: list[str] | None = None) -> dict:
    """Run (or resume) every row, then write results.md / results.json / plots. Returns the results."""
    _ensure_data(exp)
    Path(exp.out).mkdir(parents=True, exist_ok=True)
    failures = {}
    for i, row in enumerate(exp.rows):
        if only and row["name"] not in only:
            continue
        console.rule(f"[bold]{i + 1}/{len(exp.rows)}  {row['name']}")
        try:
            _run_cf(exp, row["cf"]) if "method" not in row else _run_llm(exp, row)
        except (CoraError, RuntimeError, ValueError) as e:  # one bad row must not cost the others
            failures[row["name"]] = f"{type(e).__name__}: {e}"
            console.print(f"[red]row '{row['name']}' failed:[/] {e}")
            (Path(exp.out) / "errors.log").open("a").write(f"== {row['name']}\n{traceback.format_exc()}\n")
    results = write_results(exp)
    if failures:
        raise CoraError(f"{len(failures)} row(s) failed ({', '.join(failures)}); see {exp.out}/errors.log")
    return results


def _train_info(run: Path) -> dict:
    summary = run / "train_summary.json"
    if summary.exists():
        s = read_json(summary)
        return {"steps": s.get("steps"), "train_time_s": s.get("wall_time_s"), "samples_per_s": s.get("samples_per_s")}
    metrics = read_json(run / "metrics.json").get("train", {})
    return {"epochs": metrics.get("epochs_run"), "train_time_s": metrics.get("wall_time_s")}


def write_results(exp: Experiment) -> dict:
    """results.md (Table 3 layout + warm/cold), results.json and the configured plots, from the
    rows that have finished; rows still missing are listed, not invented."""
    done, missing = [], []
    for row in exp.rows:
        run = exp.row_dir(row)
        try:
            r = report_rows([run], exp.key)[0]
        except CoraError:
            missing.append(row["name"])
            continue
        r.update(method=row["name"], label=row.get("label", row["name"]), no_titles=bool(row.get("no_titles")),
                 stage_from=row.get("stage_from", {}),
                 modules=row.get("modules", exp.llm.get("modules", "qkvo")), **_train_info(run))
        done.append(r)
    out = Path(exp.out)
    lines = [f"# {exp.name}", "", f"- data: `{exp.data}`; test rows: `{exp.key}`",
             f"- backbone: `{exp.llm.get('backbone', 'smollm2-135m')}`", f"- budget: {exp.budget or 'n/a'}", ""]
    lines.append(markdown_table(done, exp.key) if done else "_no finished rows yet_\n")
    lines += ["", "| method | training | time (s) |", "|---|---|---:|"]
    for r in done:
        what = f"{r['steps']} steps" if r.get("steps") is not None else f"{r.get('epochs')} epochs"
        # A stage taken from another row counts in both rows' steps and time: say so.
        what += "".join(f"; stage {stage} = {donor}'s" for stage, donor in r.get("stage_from", {}).items())
        lines.append(f"| {r['method']} | {what} | {r.get('train_time_s') or 0:.0f} |")
    if missing:
        lines += ["", f"Not finished: {', '.join(missing)}"]
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    results = {"name": exp.name, "key": exp.key, "budget": exp.budget, "rows": done, "missing": missing}
    write_json(out / "results.json", results)
    for plot in exp.plots:
        if done:
            PLOTS[plot](done, out / f"{plot}.png")
    return results
