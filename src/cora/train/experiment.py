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
    trust_pickle: true                         # CoLLM's zip holds pickles: the file vouches for its source
    out: runs/experiments/ml1m-table3
    test_limit: 1500                           # whole-user test sample of ~N rows; null = all
    test_per_user: 10                          # at most N rows of each drawn user (default 10; null: whole users)
    llm: {backbone: smollm2-135m, max_steps: 600, ...}   # LLMConfig fields for every LLM row
    cf: {mf: {model: mf}, sasrec: {model: sasrec}}     # CF runs by key (CFConfig fields)
    keep_cf: [sasrec]                          # optional: finished CF runs kept in the repository
    cf_store: results/cf-weights               #   here, and restored on a machine without them
    plots: [warm_cold, text_vs_id, modules]
    reference: CoRA-MF                         # optional: differences are to this row (default:
                                               # the first CoRA row, else the first row)
    rows:
      - {name: MF, cf: mf}                              # a CF row: no method
      - {name: CoRA-MF, method: cora, cf: mf}           # an LLM row; any LLMConfig field may follow
      - {name: CoLLM-MF, method: collm, cf: mf, stage_from: {lora: TALLRec}}
        # stage_from: take a stage from an EARLIER row that trained exactly it (CoLLM's and
        # BinLLM's first stage is TALLRec) instead of training it again
      - {name: CoRA-MF x3, method: cora, cf: mf, seeds: [1, 2, 3]}
        # seeds (LLM rows): trained once per seed into <row>-seed<N>/ (the LLMConfig seed);
        # reported as the mean over seeds with their standard deviation. With stage_from, a
        # seeded row takes the donor run of the same seed when the donor has seeds too, and
        # the donor's one run for every seed when it has none.

Results: results.md / results.json give every AUC / UAUC with the 95 % interval of a user-level
paired bootstrap and each row's difference to the reference (cora.eval.bootstrap), and
``predictions/<row>[-seed<N>].parquet`` holds each row's test predictions, from which
``cora report --predictions <out>/predictions`` rebuilds the table without the run folders.

Committed rows carry over: run folders live outside the repository and are lost with a machine,
while ``results`` (a folder in the repository) keeps each finished row's numbers, the settings it
ran with and its predictions. A row with no run folder here is taken from that committed
results.json when its settings still equal what the experiment file asks for and its committed
predictions reproduce its numbers; results.md marks it. So a table grows across machines row by
row, and a row whose settings changed is reported missing (stale), never carried.
"""

from __future__ import annotations

import json
import re
import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from cora.config import PLACEMENT_FIELDS, CFConfig, LLMConfig
from cora.data.sampling import DEFAULT_PER_USER, split_key
from cora.errors import CoraError
from cora.eval.curves import curves_table, run_curve
from cora.eval.plots import PLOTS, TRAINING_PLOTS
from cora.eval.bootstrap import COLUMNS, read_predictions
from cora.eval.metrics import evaluate_predictions
from cora.eval.report import (ATTRS, add_intervals, markdown_table, prediction_attrs, report_rows, run_predictions,
                              seeded_row, verdict_table)
from cora.io import atomic_dir, atomic_path, read_json, read_yaml_mapping, sha256_file, write_json, write_parquet
from cora.ranges import check_fields, check_value

console = Console(stderr=True)
ROW_KEYS = {"name", "cf", "method", "label", "stage_from", "seeds"}


@dataclass
class Experiment:
    name: str
    data: str
    out: str
    rows: list[dict]
    budget: str = ""
    source: str | None = None
    # CoLLM's zip holds pickles, which run code when loaded: as `cora data import-collm
    # --trust-pickle`, the experiment file must say it trusts the copy `source` names.
    trust_pickle: bool = False
    test_limit: int | None = None
    # With test_limit: at most N rows of each drawn user (null: whole users). Ignored without one.
    test_per_user: int | None = DEFAULT_PER_USER
    llm: dict = field(default_factory=dict)
    cf: dict = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    # Where the CF runs live (default: `out`). Experiments on the same data may share them, so a
    # SASRec that takes hours to pretrain is trained once for all of them.
    cf_root: str | None = None
    # Finished CF runs to keep in the repository (keys of `cf`) and where (`cf_store`, e.g.
    # results/cf-weights): a machine without the run folder restores the kept copy instead of
    # training again, so every machine scores with the same weights (SASRec: hours, a few MB).
    keep_cf: list[str] = field(default_factory=list)
    cf_store: str | None = None
    # Where results.md / results.json / plots / predictions/ go (default: `out`): a folder in the
    # repository (results/NAME) can be committed with the predictions its table came from,
    # while the run folders (checkpoints, logs) stay in `out`.
    results: str | None = None
    reference: str | None = None  # the row differences are taken to (default: the first CoRA row)

    @property
    def key(self) -> str:
        return split_key("test", self.test_limit, self.per_user)

    @property
    def results_root(self) -> Path:
        return Path(self.results or self.out)

    @property
    def per_user(self) -> int | None:
        return self.test_per_user if self.test_limit is not None else None

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

    def place(self, device: str | None = None, tf32: bool = False) -> None:
        """Run the LLM rows on ``device`` (and with TF32 matmuls) instead of what the file says:
        placement fields are recorded in each run's config.yaml but never compared (PLACEMENT_FIELDS)."""
        placed = {}
        if device is not None:
            placed["device"] = device
        if tf32:
            placed["tf32"] = True
        if placed:
            self.llm = {**self.llm, **check_fields("LLMConfig", placed, "--device / --tf32")}

    def validate(self, source: Path) -> None:
        # Types and ranges of the top-level fields first (cora.ranges), so what follows may use them.
        for k, v in check_fields("Experiment", vars(self), str(source)).items():
            setattr(self, k, v)
        LLMConfig.from_dict(self.llm, source=f"{source}: llm")
        for key, spec in self.cf.items():
            if not isinstance(spec, dict):
                raise CoraError(f"{source}: cf.{key} must be a mapping of CF settings, e.g. {{model: mf}}")
            CFConfig.for_model(spec.get("model", key), source=f"{source}: cf.{key}",
                               **{k: v for k, v in spec.items() if k != "model"})
        names = set()
        for i, row in enumerate(self.rows):
            where = f"{source}: rows[{i}]"
            if not isinstance(row, dict):
                raise CoraError(f"{where}: a row must be a mapping, e.g. {{name: MF, cf: mf}} (got {row!r})")
            if "name" not in row:
                raise CoraError(f"{where}: missing 'name'")
            if not isinstance(row["name"], str):
                raise CoraError(f"{where}: name must be a string (got {row['name']!r})")
            if row["name"] in names:
                raise CoraError(f"{where}: duplicate row name '{row['name']}'")
            names.add(row["name"])
            if row.get("cf") is not None and row["cf"] not in self.cf:
                raise CoraError(f"{where}: cf '{row['cf']}' is not defined under 'cf' (have: {', '.join(self.cf)})")
            if "method" not in row and "cf" not in row:
                raise CoraError(f"{where}: a row needs a 'method' (LLM row) or a 'cf' (CF row)")
            if "method" in row:
                self.llm_config(row, source=where)
            if not isinstance(row.get("stage_from") or {}, dict):
                raise CoraError(f"{where}: stage_from must map a stage to an earlier row, e.g. {{lora: TALLRec}}")
            for stage, donor in (row.get("stage_from") or {}).items():
                if donor not in names - {row["name"]} or "method" not in self._row(donor):
                    raise CoraError(f"{where}: stage_from {stage}: '{donor}' must be an LLM row listed before "
                                    f"'{row['name']}'")
            self._check_seeds(row, where)
        if unknown := [k for k in self.keep_cf if k not in self.cf]:
            raise CoraError(f"{source}: keep_cf: '{unknown[0]}' is not defined under 'cf' (have: {', '.join(self.cf)})")
        if self.keep_cf and not self.cf_store:
            raise CoraError(f"{source}: keep_cf needs cf_store, the folder the kept CF runs go to "
                            "(e.g. cf_store: results/cf-weights)")
        if self.reference is not None and self.reference not in names:
            raise CoraError(f"{source}: reference '{self.reference}' is not a row name (rows: {', '.join(names)})")
        if unknown := sorted(set(self.plots) - set(PLOTS)):
            raise CoraError(f"{source}: unknown plot(s) {', '.join(unknown)} (choose from {', '.join(PLOTS)})")

    def _check_seeds(self, row: dict, where: str) -> None:
        """seeds: distinct integers on an LLM row. A seeded donor gives each seed the donor run of
        that seed, so it must list the row's seeds; a donor without seeds is one run that every
        seed of the row starts from (CoLLM-MF's seeds on one TALLRec run)."""
        seeds, donors = row.get("seeds"), row.get("stage_from") or {}
        if seeds is None:
            for stage, donor in donors.items():
                if self._row(donor).get("seeds"):
                    raise CoraError(f"{where}: stage_from {stage}: '{donor}' is trained once per seed; give "
                                    f"'{row['name']}' seeds too (some of {self._row(donor)['seeds']})")
            return
        if "method" not in row:
            raise CoraError(f"{where}: seeds are for LLM rows (a CF row is the CF run its LLM rows share; "
                            "set its seed under 'cf')")
        if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
                or any(not isinstance(s, int) or isinstance(s, bool) for s in seeds)):
            raise CoraError(f"{where}: seeds must be a list of distinct integers, e.g. [1, 2, 3] (got {seeds!r})")
        for s in seeds:  # each becomes an LLMConfig seed: refused here, before any row runs
            check_value("LLMConfig", "seed", s, where, label="seeds")
        if "seed" in row:
            raise CoraError(f"{where}: give seed or seeds, not both")
        for stage, donor in donors.items():
            have = self._row(donor).get("seeds")
            if have is None:  # one donor run shared by every seed of this row (reuse_stage allows it)
                continue
            if lacking := [s for s in seeds if s not in have]:
                raise CoraError(f"{where}: stage_from {stage}: '{donor}' has no run with seed {lacking[0]} "
                                f"(its seeds: {have}); give '{donor}' seeds: {seeds} too")

    # ------------------------------------------------------------------ paths and configs
    def _row(self, name: str) -> dict:
        return next(r for r in self.rows if r["name"] == name)

    def row_dir(self, row: dict) -> Path:
        if "method" not in row:
            return self.cf_dir(row["cf"])
        return Path(self.out) / re.sub(r"[^A-Za-z0-9_.-]+", "-", row["name"]).strip("-").lower()

    def cf_dir(self, key: str) -> Path:
        return Path(self.cf_root or self.out) / f"cf-{key}"

    def seed_dir(self, row: dict, seed: int | None) -> Path:
        base = self.row_dir(row)
        return base if seed is None else base.with_name(f"{base.name}-seed{seed}")

    def seed_runs(self, row: dict) -> list[tuple[int | None, Path]]:
        """(seed, run folder) of each training of the row: one unseeded, or one per seed."""
        return [(s, self.seed_dir(row, s)) for s in (row.get("seeds") or [None])]

    def row_settings(self, row: dict, seed: int | None = None) -> dict:
        """What one training of the row (``seed``: of a seeded row) would run with now: its
        resolved LLMConfig or CFConfig as a dict, compared before a committed training is carried."""
        if "method" in row:
            return self.seed_config(row, seed).to_dict()
        spec = dict(self.cf[row["cf"]])
        return CFConfig.for_model(spec.pop("model", row["cf"]), data=self.data, **spec).to_dict()

    def seed_config(self, row: dict, seed: int | None) -> LLMConfig:
        """The LLMConfig of one training of an LLM row (``seed``: of a seeded row)."""
        return self.llm_config(row if seed is None else {**row, "seed": seed}, source=row["name"])

    def llm_config(self, row: dict, source: str) -> LLMConfig:
        """The row's LLMConfig: its fields over the experiment's ``llm`` block over the reference
        settings of its method and CF model (LLM_DEFAULTS)."""
        cf_model = None
        if row.get("cf"):
            cf_model = self.cf[row["cf"]].get("model", row["cf"])
        return LLMConfig.for_method(self._llm_fields(row), cf_model=cf_model, source=source)

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

    if not exp.trust_pickle:
        raise CoraError(f"{exp.source}: CoLLM's files are pickles, which can run code when loaded; add "
                        "'trust_pickle: true' to the experiment file if you trust this copy")
    console.print(f"[bold]importing[/] {exp.source} -> {exp.data}")
    import_collm(exp.source, exp.data, trust_pickle=True)  # the experiment file said it trusts it


def _run_cf(exp: Experiment, key: str) -> Path:
    from cora.cf.train import evaluate_cf_run, train_cf

    out = exp.cf_dir(key)
    spec = dict(exp.cf[key])
    cfg = CFConfig.for_model(spec.pop("model", key), data=exp.data, **spec)
    kept = Path(exp.cf_store) / out.name if key in exp.keep_cf else None
    if kept is not None and not (out.exists() and any(out.iterdir())):
        _restore_cf(cfg, kept, out)
    train_cf(cfg, out, resume=True)
    if exp.key not in read_json(out / "metrics.json"):
        evaluate_cf_run(out, "test", exp.test_limit, exp.per_user)
    if kept is not None:
        _keep_cf(cfg, out, kept)
    return out


CF_KEPT_NEEDS = ("config.yaml", "model.safetensors", "metrics.json")


def _restore_cf(cfg: CFConfig, kept: Path, out: Path) -> None:
    """A CF run kept in the repository by another machine becomes this machine's run folder
    (train_cf then finds it finished), unless it was trained with other settings."""
    from cora.cf.train import differing_settings

    if not all((kept / f).exists() for f in CF_KEPT_NEEDS):
        return
    if diff := differing_settings(cfg, kept):
        console.print(f"[yellow]{kept}: kept with other settings ({', '.join(diff)}); training {out} anew")
        return
    console.print(f"{out}: restored from {kept}")
    _copy_files(kept, out, [f.name for f in kept.iterdir() if f.is_file()])


def _keep_cf(cfg: CFConfig, out: Path, kept: Path) -> None:
    """Copy the finished CF run (weights, config, metrics, log, predictions) to ``kept``; a kept
    run of other settings is left alone (the rows computed from it name its weights' sha256)."""
    from cora.cf.train import differing_settings

    if kept.exists() and all((kept / f).exists() for f in CF_KEPT_NEEDS) and (diff := differing_settings(cfg, kept)):
        console.print(f"[yellow]{out}: not kept: {kept} holds a run of other settings ({', '.join(diff)})")
        return
    _copy_files(out, kept, [f.name for f in out.iterdir() if f.is_file()])


def _copy_files(src: Path, dst: Path, names: list[str]) -> None:
    """Replace ``dst`` with a folder holding ``names`` from ``src``, in one atomic swap; nothing
    is written when ``dst`` holds exactly those files already."""
    if dst.exists() and sorted(f.name for f in dst.iterdir()) == sorted(names) and all(
            (dst / f).read_bytes() == (src / f).read_bytes() for f in names):
        return
    with atomic_dir(dst, overwrite=True) as tmp:
        for f in names:
            shutil.copyfile(src / f, tmp / f)


def _run_llm(exp: Experiment, row: dict, seed: int | None = None) -> Path:
    from cora.train.run import evaluate_run, train_run

    out = exp.seed_dir(row, seed)
    if row.get("cf"):
        _run_cf(exp, row["cf"])
    cfg = exp.seed_config(row, seed)
    # A seeded donor gives the run of this seed (validate made sure it has it).
    donors = {stage: exp._row(donor) for stage, donor in (row.get("stage_from") or {}).items()}
    stage_from = {stage: _donor_dir(exp, d, seed if d.get("seeds") else None) for stage, d in donors.items()}
    if not (out / "train_summary.json").exists():
        train_run(cfg, out, resume=(out / "config.yaml").exists(), stage_from=stage_from)
    metrics = read_json(out / "metrics.json") if (out / "metrics.json").exists() else {}
    if exp.key not in metrics:
        evaluate_run(out, "test", exp.test_limit, per_user=exp.per_user)
    return out


STAGE_FILES = ("config.yaml", "model.safetensors", "train_summary.json")


def _donor_dir(exp: Experiment, donor: dict, seed: int | None) -> Path:
    """Where a stage is taken from: the donor's run folder when it has finished here, else the
    copy of its trained stage in the committed results (``stages/``; a donor trained on
    another machine), else the run folder (reuse_stage then says it has not finished)."""
    run = exp.seed_dir(donor, seed)
    kept = exp.results_root / "stages" / run.name
    # A run folder brought back without its weights (records only) is no donor either.
    if not all((run / f).exists() for f in STAGE_FILES) and all((kept / f).exists() for f in STAGE_FILES):
        return kept
    return run


def _keep_stage(exp: Experiment, row: dict, seed: int | None) -> None:
    """Copy this training into ``<results>/stages/`` when other rows take a stage from its row
    (TALLRec for CoLLM / BinLLM) and it has finished: a few MB of LoRA, so a later machine trains
    the consuming rows without training it again. Each training copies only its own stage, so
    parallel workers never write the same kept folder."""
    if not any(row["name"] in (r.get("stage_from") or {}).values() for r in exp.rows):
        return
    run = exp.seed_dir(row, seed)
    kept = exp.results_root / "stages" / run.name
    if not all((run / f).exists() for f in STAGE_FILES):
        return
    if all((kept / f).exists() and (kept / f).read_bytes() == (run / f).read_bytes() for f in STAGE_FILES):
        return
    # The log too: CoLLM's curve shows its first stage.
    _copy_files(run, kept, [f for f in STAGE_FILES + ("log.jsonl",) if (run / f).exists()])


def run_training(exp: Experiment, row: dict, seed: int | None, committed: dict, files: dict) -> None:
    """One training of a row (its CF model, or one seed of an LLM row), resumed where it stopped;
    one finished on another machine and committed with the same settings is not redone. The
    sequential loop and each ``--jobs`` worker (cora.train.parallel) run exactly this."""
    if _carried_run(exp, row, seed, exp.seed_dir(row, seed), committed, files):
        console.print(f"{run_key(row, seed)}: carried from {exp.results_root / 'results.json'}")
    elif "method" not in row:
        _run_cf(exp, row["cf"])
    else:
        _run_llm(exp, row, seed)
        _keep_stage(exp, row, seed)


def run_experiment(exp: Experiment, only: list[str] | None = None) -> dict:
    """Run (or resume) every row, then write results.md / results.json / plots. Returns the results."""
    _ensure_data(exp)
    Path(exp.out).mkdir(parents=True, exist_ok=True)
    failures = {}
    committed, _ = _committed(exp)
    files = _committed_predictions(exp) if committed else {}
    for i, row in enumerate(exp.rows):
        if only and row["name"] not in only:
            continue
        console.rule(f"[bold]{i + 1}/{len(exp.rows)}  {row['name']}")
        try:
            for seed, _ in exp.seed_runs(row):
                run_training(exp, row, seed, committed, files)
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
        # A staged run's summary is its last (trained) stage's, hardware included.
        return {"steps": s.get("steps"), "train_time_s": s.get("wall_time_s"), "samples_per_s": s.get("samples_per_s"),
                "stopped": _stopped(s), **({"hardware": s["hardware"]} if s.get("hardware") else {})}
    metrics = read_json(run / "metrics.json").get("train", {})
    return {"epochs": metrics.get("epochs_run"), "train_time_s": metrics.get("wall_time_s")}


def _stopped(summary: dict) -> str:
    """Why each trained stage ended, for the table: 'patience (best 600)', 'cap (best 1000)';
    a stage taken from another run says so."""
    def one(s: dict) -> str:
        if s.get("reused_from"):
            return "taken from " + Path(s["reused_from"]).name
        why = {"max_steps": "cap", "patience": "patience"}.get(s.get("stop_reason"), s.get("stop_reason") or "?")
        return f"{why} (best {s['best_step']})" if s.get("best_step") else why

    stages = summary.get("stages")
    return "; ".join(f"{name}: {one(st)}" for name, st in stages.items()) if stages else one(summary)


def run_key(row: dict, seed: int | None) -> str:
    """A training's name in results.json (``runs``, ``curves``): the row's, plus its seed."""
    return row["name"] + ("" if seed is None else f" seed {seed}")


def _local_run(exp: Experiment, row: dict, seed: int | None, run: Path) -> dict | None:
    """One training of the row from its run folder here, with its test predictions; None while it
    has no metrics for the experiment's test key (not trained, or still training)."""
    try:
        entry = report_rows([run], exp.key)[0]
    except CoraError:
        return None
    entry.update(_train_info(run), seed=seed)
    # What it actually ran with (its config.yaml), so that another machine can carry it.
    entry["settings"] = read_yaml_mapping(run / "config.yaml", "run config")
    if "hardware" not in entry:  # a run from before summaries recorded it: the device it asked for
        s = entry["settings"]
        entry["hardware"] = s.get("device", "cpu") + (" tf32" if s.get("tf32") else "") if "method" in row else "cpu"
    # The CF weights it read (or is): a CF run trained again elsewhere may differ.
    weights = exp.cf_dir(row["cf"]) / "model.safetensors" if row.get("cf") else None
    if weights is not None and weights.exists():
        entry["cf_sha256"] = sha256_file(weights)
    # A finished run with a corrupt or stale predictions file is an error, not "missing".
    frame = run_predictions(run, exp.key, entry["n"])
    return {"entry": entry, "frame": frame, "source": str(run / f"predictions-{exp.key}.parquet")}


def _settings_diff(saved: dict, now: dict) -> list[str]:
    """Fields both know whose values differ (a field added to the code since is not a change)."""
    def canon(v):  # as results.json stores it (tuples become lists, keys strings)
        return json.dumps(v, sort_keys=True, default=str)

    return [k for k in now if k in saved and k not in PLACEMENT_FIELDS and canon(saved[k]) != canon(now[k])]


def _carried_run(exp: Experiment, row: dict, seed: int | None, run: Path, committed: dict, files: dict) -> dict | None:
    """One training of the row from the committed results.json and predictions/, for a run whose
    folder is not on this machine; None when there is none or it ran with other settings (stale).
    A committed file that no longer reproduces its numbers is an error: the table would not be
    recomputable."""
    key = run_key(row, seed)
    if run.exists() or key not in committed:
        return None
    entry = dict(committed[key])
    where = exp.results_root / "results.json"
    now = exp.row_settings(row, seed)
    if "settings" not in entry:
        console.print(f"[yellow]{where}: '{key}' has no recorded settings: not carried (run it)")
        return None
    if diff := _settings_diff(entry["settings"], now):
        console.print(f"[yellow]{where}: '{key}' ran with other settings for {', '.join(diff)}: stale, "
                      "not carried (run it again)")
        return None
    if (row["name"], seed) not in files:
        raise CoraError(f"{exp.results_root / 'predictions'}: no predictions file for committed '{key}' on "
                        f"{exp.key} (restore it, or delete '{key}' from {where})")
    path, frame = files[(row["name"], seed)]
    m = evaluate_predictions(frame)
    if len(frame) != entry["n"] or abs(m["auc"] - entry["auc"]) > 1e-5 or (
            entry.get("uauc") is not None and abs(m["uauc"] - entry["uauc"]) > 1e-5):
        raise CoraError(f"{path}: does not reproduce committed '{key}' ({len(frame):,} rows, AUC {m['auc']:.6f}; "
                        f"results.json: {entry['n']:,}, {entry['auc']:.6f})")
    entry.update(carried=True, seed=seed)
    return {"entry": entry, "frame": frame, "source": str(path)}


def _finished_row(exp: Experiment, row: dict, committed: dict, files: dict) -> tuple[dict, list[dict]] | None:
    """The row's result (a seeded row: mean over its seeds, per-seed rows under ``seeds``) and its
    trainings, or None while one of them is neither finished here nor committed. Each training
    comes from its run folder when it is here, else from the committed results (so the seeds of
    one row may be trained on different machines)."""
    got = []
    for seed, run in exp.seed_runs(row):
        one = _local_run(exp, row, seed, run) or _carried_run(exp, row, seed, run, committed, files)
        if one is None:
            return None
        got.append(one)
    per_seed = [dict(g["entry"]) for g in got]
    carried = [p["seed"] for p in per_seed if p.get("carried")]
    if row.get("seeds"):
        r = seeded_row(per_seed, [p["seed"] for p in per_seed])
        r["train_time_s"] = sum(p.get("train_time_s") or 0 for p in per_seed)  # all its seeds
        for entry, p in zip(r["seeds"], per_seed):  # each seed keeps its own training record
            entry.update({k: p[k] for k in ("steps", "epochs", "train_time_s", "samples_per_s", "stopped",
                                            "carried", "cf_sha256", "hardware") if k in p})
    else:
        r = per_seed[0]
    r.pop("seed", None)
    r.pop("carried", None)
    r.pop("settings", None)  # kept once, under results.json's "runs"
    if carried:
        r["carried"] = carried if row.get("seeds") else True
    r.update(_row_identity(exp, row))
    if shas := {p["cf_sha256"] for p in per_seed if p.get("cf_sha256")}:
        r["cf_sha256"] = sorted(shas)[0] if len(shas) == 1 else sorted(shas)
    return r, got


def _cf_weight_notes(exp: Experiment, done: list[dict]) -> list[str]:
    """One line per CF key whose rows were computed from different CF weights (a CF run trained
    again on another machine that did not reproduce the same bits)."""
    notes = []
    for key in exp.cf:
        shas = set()
        for r in done:
            if exp._row(r["method"]).get("cf") == key and r.get("cf_sha256"):
                shas |= set([r["cf_sha256"]] if isinstance(r["cf_sha256"], str) else r["cf_sha256"])
        if len(shas) > 1:
            notes.append(f"Rows on cf '{key}' were computed from {len(shas)} different CF weight files "
                         f"(sha256 {', '.join(sorted(s[:12] for s in shas))}; see cf_sha256 in results.json).")
    return notes


def _committed(exp: Experiment) -> tuple[dict, dict]:
    """The finished trainings (by :func:`run_key`) and curves of the committed results.json, if
    there is one. A file written before ``runs`` existed gives its unseeded rows."""
    path = exp.results_root / "results.json"
    if not path.exists():
        return {}, {}
    saved = read_json(path, "results file", mapping=True)
    runs = saved.get("runs")
    if not isinstance(runs, dict):
        runs = {r["method"]: r for r in saved.get("rows") or []
                if isinstance(r, dict) and "method" in r and "seeds" not in r}
    return runs, saved.get("curves") or {}


def _committed_predictions(exp: Experiment) -> dict:
    """(row name, seed) -> (file, frame) of the committed predictions on the experiment's test key."""
    folder = exp.results_root / "predictions"
    files = {}
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        frame = read_predictions(path)
        info = frame.attrs.get(ATTRS) or {}
        if info.get("row") is not None and info.get("split", exp.key) == exp.key:
            files[(info["row"], info.get("seed"))] = (path, frame)
    return files


def _curve(run: Path, key: str, committed: dict) -> dict:
    """A row's valid curve from its run folder, else the committed one (a run lost with a machine)."""
    if run.exists() or not isinstance(committed.get(key), dict):
        return run_curve(run)
    return committed[key]


def _row_identity(exp: Experiment, row: dict) -> dict:
    """How a row is named and drawn in the table and in its predictions files' attrs."""
    kind = row.get("method") or exp.cf[row["cf"]].get("model", row["cf"])
    return {"method": row["name"], "kind": kind, "label": row.get("label", row["name"]),
            "no_titles": bool(row.get("no_titles")), "stage_from": row.get("stage_from", {}),
            "modules": row.get("modules", exp.llm.get("modules", "qkvo"))}


def _copy_predictions(exp: Experiment, trainings: dict) -> None:
    """<out>/predictions/<row>[-seed<N>].parquet for every finished training (a seed of a row
    still missing others included): the results folder alone rebuilds the table (`cora report
    --predictions`) and carries the training to another machine; the file's attrs keep the row's
    name, seed and position."""
    folder, stems = exp.results_root / "predictions", {}
    for order, row in enumerate(exp.rows):
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", row["name"]).strip("-") or "row"
        stems[row["name"]] = stem if stem not in stems.values() else f"{stem}-{order}"  # 'A B', 'A-B'
    order = {row["name"]: i for i, row in enumerate(exp.rows)}
    for t in trainings.values():
        row, seed = t["row"], t["seed"]
        copy = t["frame"][list(COLUMNS)].reset_index(drop=True)
        copy.attrs = prediction_attrs(_row_identity(exp, row), order[row["name"]], seed, exp.key)
        write_parquet(folder / (stems[row["name"]] + ("" if seed is None else f"-seed{seed}") + ".parquet"), copy)


def write_results(exp: Experiment) -> dict:
    """results.md (Table 3 layout + warm/cold, with 95 % intervals and differences to the
    reference), results.json, predictions/ and the configured plots, from the rows that have
    finished; rows still missing are listed, not invented."""
    done, missing, loaded, trainings = [], [], [], {}
    committed, committed_curves = _committed(exp)
    files = _committed_predictions(exp) if committed else {}
    for row in exp.rows:
        finished = _finished_row(exp, row, committed, files)
        if finished is None:
            missing.append(row["name"])
            # Its trainings that have finished (seed 1 of 3) are kept for the machine that ends it.
            for seed, run in exp.seed_runs(row):
                if one := _local_run(exp, row, seed, run) or _carried_run(exp, row, seed, run, committed, files):
                    trainings[run_key(row, seed)] = {"row": row, "seed": seed, **one}
            continue
        r, got = finished
        done.append(r)
        loaded.append(([g["frame"] for g in got], [g["source"] for g in got]))
        trainings.update({run_key(row, g["entry"]["seed"]): {"row": row, "seed": g["entry"]["seed"], **g} for g in got})
    frames = [f for f, _ in loaded]
    reference = exp.reference if exp.reference in {r["method"] for r in done} else None
    meta = add_intervals(done, frames, sources=[s for _, s in loaded], reference=reference) if done else None
    _copy_predictions(exp, trainings)
    out = exp.results_root
    lines = [f"# {exp.name}", "", f"- data: `{exp.data}`; test rows: `{exp.key}`",
             f"- backbone: `{exp.llm.get('backbone', 'smollm2-135m')}`", f"- budget: {exp.budget or 'n/a'}", ""]
    if exp.reference and reference is None:
        lines += [f"Reference row {exp.reference} has not finished: differences are to "
                  f"{meta['reference'] if meta else 'none'}.", ""]
    lines.append(markdown_table(done, exp.key, meta) if done else "_no finished rows yet_\n")
    if verdicts := verdict_table(done, meta):
        lines += ["", verdicts]
    lines += ["", "| method | training | stopped by (best step) | samples/s | time (s) | trained on |",
              "|---|---|---|---:|---:|---|"]
    for r in done:
        what = f"{r['steps']} steps" if r.get("steps") is not None else f"{r.get('epochs')} epochs"
        if "seeds" in r:
            what += f" x {len(r['seeds'])} seeds ({', '.join(str(s['seed']) for s in r['seeds'])})"
        # A stage taken from another row counts in both rows' steps and time: say so.
        what += "".join(f"; stage {stage} = {donor}'s" for stage, donor in r.get("stage_from", {}).items())
        runs = r["seeds"] if "seeds" in r else [r]
        stopped = " / ".join(s.get("stopped") or "-" for s in runs)  # one per seed
        rate = " / ".join(f"{s['samples_per_s']:.2f}" if s.get("samples_per_s") else "-" for s in runs)
        where = " / ".join(sorted({s.get("hardware") or "cpu" for s in runs}))  # runs before it was recorded: cpu
        lines.append(f"| {r['method']} | {what} | {stopped} | {rate} | {r.get('train_time_s') or 0:.0f} | {where} |")
    if notes := _cf_weight_notes(exp, done):
        lines += [""] + notes
    if carried := [r["method"] + ("" if r["carried"] is True else f" (seeds {', '.join(map(str, r['carried']))})")
                   for r in done if r.get("carried")]:
        lines += ["", f"Carried from the committed results (no run folder on this machine; their committed "
                      f"predictions re-checked): {', '.join(carried)}"]
    if missing:
        lines += ["", f"Not finished: {', '.join(missing)}"]
    # Valid-AUC curves of every LLM row that has trained at all (a row still training included).
    training = [{"method": run_key(row, seed),
                 "label": row.get("label", row["name"]) + ("" if seed is None else f" (seed {seed})"),
                 "curve": _curve(path, run_key(row, seed), committed_curves)}
                for row in exp.rows if "method" in row for seed, path in exp.seed_runs(row)]
    curves = {r["method"]: r["curve"] for r in training}
    if table := curves_table(curves):
        lines += ["", "Valid AUC by step, on the fixed validation sample (rows still training included):", "", table]
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    results = {"name": exp.name, "key": exp.key, "budget": exp.budget, "bootstrap": meta, "rows": done,
               "missing": missing, "curves": curves,
               # Every finished training with the settings it ran with: what another machine carries.
               "runs": {k: t["entry"] for k, t in trainings.items()}}
    write_json(out / "results.json", results)
    for plot in exp.plots:
        if plot in TRAINING_PLOTS:
            if any(r["curve"]["steps"] for r in training):  # nothing logged yet: no empty figure
                PLOTS[plot](training, out / f"{plot}.png")
        elif done:
            PLOTS[plot](done, out / f"{plot}.png")
    return results
