"""The experiment file: its fields, their checks, and one :class:`Row` per row.

Config (YAML)::

    name: ml1m-table3
    budget: "CPU, 2 cores: about N hours"      # printed in results.md
    data: runs/ml1m                            # dataset folder
    source: collm-ml1m                         # optional: imported into `data` when absent; a file, or
                                               # a download name (cora.data.download.DOWNLOADS)
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
      - {name: CoRA-MF qkvo, method: cora, cf: mf, carry: {from: results/ml1m-cpu, training: CoRA-MF seed 1}}
        # carry: never trained here; the row is another experiment's committed training (its
        # results.json entry and predictions, re-checked), when that ran with exactly the settings
        # this row resolves to and on the same test sample. Else it is reported missing (stale).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from cora.config import CFConfig, LLMConfig
from cora.data.sampling import DEFAULT_PER_USER, split_key
from cora.errors import CoraError
from cora.eval.plots import PLOTS
from cora.experiment.plan import Plan, Row
from cora.io import read_yaml_mapping
from cora.ranges import check_fields, check_value


# The keys of a row that are no LLMConfig field; every other key of a row is one.
@dataclass
class Experiment:
    name: str
    data: str
    out: str
    rows: list[Row]  # the file's mappings, one Row each once validated
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
    # Decisions beyond "reference vs row": [{name, plus: [rows], minus: [rows]}], each the sum of
    # the plus rows minus the minus rows on the same resampled users, e.g. a difference of
    # differences ("does text help CoRA more than CoLLM?"); in results.md / results.json.
    contrasts: list = field(default_factory=list)

    @property
    def key(self) -> str:
        return split_key("test", self.test_limit, self.per_user)

    @property
    def results_root(self) -> Path:
        return Path(self.results or self.out)

    @property
    def per_user(self) -> int | None:
        return self.test_per_user if self.test_limit is not None else None

    @cached_property
    def plan(self) -> Plan:
        """Every training of the file, resolved once (after :meth:`place`, which settles where they run)."""
        return Plan(self)

    @classmethod
    def load(cls, path: str | Path) -> Experiment:
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

    def place(self, device: str | None = None, tf32: bool = False, backbone: str | None = None,
              dtype: str | None = None) -> None:
        """Run the LLM rows on ``device`` (and with TF32 matmuls) instead of what the file says:
        placement fields are recorded in each run's config.yaml but never compared (PLACEMENT_FIELDS).
        ``backbone`` / ``dtype`` replace the file's ``llm:`` values (a local folder for a hub id, the
        precision); they are settings like any other, recorded and compared on resume, and a row
        that names its own dtype keeps it."""
        placed = {}
        if device is not None:
            placed["device"] = device
        if tf32:
            placed["tf32"] = True
        if backbone is not None:
            placed["backbone"] = backbone
        if dtype is not None:
            placed["dtype"] = dtype
        if placed:
            self.llm = {**self.llm, **check_fields("LLMConfig", placed, "--device / --tf32 / --backbone / --dtype")}
            self.__dict__.pop("plan", None)  # resolved again, with the new placement

    def validate(self, source: Path) -> None:
        """Check every field and row (the rows' configs resolve); ``rows`` become :class:`Row` objects."""
        # Types and ranges of the top-level fields first (cora.ranges), so what follows may use them.
        for k, v in check_fields("Experiment", vars(self), str(source)).items():
            setattr(self, k, v)
        LLMConfig.from_dict(self.llm, source=f"{source}: llm")
        for key, spec in self.cf.items():
            if not isinstance(spec, dict):
                raise CoraError(f"{source}: cf.{key} must be a mapping of CF settings, e.g. {{model: mf}}")
            CFConfig.for_model(spec.get("model", key), source=f"{source}: cf.{key}",
                               **{k: v for k, v in spec.items() if k != "model"})
        rows: dict[str, Row] = {}  # the rows checked so far, by name
        for i, d in enumerate(self.rows):
            where = f"{source}: rows[{i}]"
            if not isinstance(d, dict):
                raise CoraError(f"{where}: a row must be a mapping, e.g. {{name: MF, cf: mf}} (got {d!r})")
            if "name" not in d:
                raise CoraError(f"{where}: missing 'name'")
            if not isinstance(d["name"], str):
                raise CoraError(f"{where}: name must be a string (got {d['name']!r})")
            if d["name"] in rows:
                raise CoraError(f"{where}: duplicate row name '{d['name']}'")
            if d.get("cf") is not None and d["cf"] not in self.cf:
                raise CoraError(f"{where}: cf '{d['cf']}' is not defined under 'cf' (have: {', '.join(self.cf)})")
            if "method" not in d and "cf" not in d:
                raise CoraError(f"{where}: a row needs a 'method' (LLM row) or a 'cf' (CF row)")
            row = Row.from_mapping(i, d)
            if "method" in d:
                self._llm_config(row, None, where)
            if not isinstance(row.stage_from, dict):
                raise CoraError(f"{where}: stage_from must map a stage to an earlier row, e.g. {{lora: TALLRec}}")
            for stage, donor in row.stage_from.items():
                if donor not in rows or rows[donor].method is None:
                    raise CoraError(f"{where}: stage_from {stage}: '{donor}' must be an LLM row listed before "
                                    f"'{row.name}'")
            self._check_seeds(d, row, rows, where)
            self._check_carry(row, where)
            rows[row.name] = row
        self.rows = list(rows.values())
        names = [r.name for r in self.rows]
        if unknown := [k for k in self.keep_cf if k not in self.cf]:
            raise CoraError(f"{source}: keep_cf: '{unknown[0]}' is not defined under 'cf' (have: {', '.join(self.cf)})")
        if self.keep_cf and not self.cf_store:
            raise CoraError(f"{source}: keep_cf needs cf_store, the folder the kept CF runs go to "
                            "(e.g. cf_store: results/cf-weights)")
        if self.reference is not None and self.reference not in names:
            raise CoraError(f"{source}: reference '{self.reference}' is not a row name (rows: {', '.join(names)})")
        if unknown := sorted(set(self.plots) - set(PLOTS)):
            raise CoraError(f"{source}: unknown plot(s) {', '.join(unknown)} (choose from {', '.join(PLOTS)})")
        for i, c in enumerate(self.contrasts):
            where = f"{source}: contrasts[{i}]"
            if not isinstance(c, dict) or set(c) - {"name", "plus", "minus"} or not isinstance(c.get("name"), str):
                raise CoraError(f"{where}: write {{name: TEXT, plus: [ROW, ...], minus: [ROW, ...]}} (got {c!r})")
            for side in ("plus", "minus"):
                if not isinstance(c.get(side, []), list) or (bad := [r for r in c.get(side, []) if r not in names]):
                    raise CoraError(f"{where}: {side} must list row names (unknown: {bad[0] if bad else c.get(side)!r})")

    def contrast_weights(self, finished: set[str]) -> dict[str, dict[str, float]]:
        """name -> {row: +1 / -1} of every contrast whose rows have all finished."""
        out = {}
        for c in self.contrasts:
            weights: dict[str, float] = {}
            for side, sign in (("plus", 1.0), ("minus", -1.0)):
                for r in c.get(side, []):
                    weights[r] = weights.get(r, 0.0) + sign
            if set(weights) <= finished:
                out[c["name"]] = weights
        return out

    @staticmethod
    def _check_carry(row: Row, where: str) -> None:
        if row.carry is None:
            return
        c = row.carry
        if (not isinstance(c, dict) or set(c) != {"from", "training"} or not all(isinstance(v, str) for v in c.values())):
            raise CoraError(f"{where}: carry must be {{from: RESULTS_FOLDER, training: NAME}}, e.g. "
                            f"{{from: results/ml1m-cpu, training: CoRA-MF seed 1}} (got {c!r})")
        if row.method is None or row.seeds or row.stage_from:
            raise CoraError(f"{where}: carry is for an LLM row without seeds or stage_from (one committed training)")

    @staticmethod
    def _check_seeds(d: dict, row: Row, earlier: dict[str, Row], where: str) -> None:
        """seeds: distinct integers on an LLM row. A seeded donor gives each seed the donor run of
        that seed, so it must list the row's seeds; a donor without seeds is one run that every
        seed of the row starts from (CoLLM-MF's seeds on one TALLRec run)."""
        seeds = row.seeds
        if seeds is None:
            for stage, donor in row.stage_from.items():
                if earlier[donor].seeds:
                    raise CoraError(f"{where}: stage_from {stage}: '{donor}' is trained once per seed; give "
                                    f"'{row.name}' seeds too (some of {earlier[donor].seeds})")
            return
        if "method" not in d:
            raise CoraError(f"{where}: seeds are for LLM rows (a CF row is the CF run its LLM rows share; "
                            "set its seed under 'cf')")
        if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
                or any(not isinstance(s, int) or isinstance(s, bool) for s in seeds)):
            raise CoraError(f"{where}: seeds must be a list of distinct integers, e.g. [1, 2, 3] (got {seeds!r})")
        for s in seeds:  # each becomes an LLMConfig seed: refused here, before any row runs
            check_value("LLMConfig", "seed", s, where, label="seeds")
        if "seed" in d:
            raise CoraError(f"{where}: give seed or seeds, not both")
        for stage, donor in row.stage_from.items():
            have = earlier[donor].seeds
            if have is None:  # one donor run shared by every seed of this row (reuse_stage allows it)
                continue
            if lacking := [s for s in seeds if s not in have]:
                raise CoraError(f"{where}: stage_from {stage}: '{donor}' has no run with seed {lacking[0]} "
                                f"(its seeds: {have}); give '{donor}' seeds: {seeds} too")

    # ------------------------------------------------------------------ rows, paths and configs
    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def cf_dir(self, key: str) -> Path:
        return Path(self.cf_root or self.out) / f"cf-{key}"

    def run_dir(self, row: Row, seed: int | None = None) -> Path:
        """The run folder of one training of the row (``seed``: of a seeded row); a CF row's is its CF run."""
        if row.method is None:
            return self.cf_dir(row.cf)
        base = Path(self.out) / re.sub(r"[^A-Za-z0-9_.-]+", "-", row.name).strip("-").lower()
        return base if seed is None else base.with_name(f"{base.name}-seed{seed}")

    def cf_config(self, key: str) -> CFConfig:
        """The CFConfig of the CF run ``key``."""
        spec = dict(self.cf[key])
        return CFConfig.for_model(spec.pop("model", key), data=self.data, **spec)

    def config(self, row: Row, seed: int | None = None) -> LLMConfig | CFConfig:
        """What one training of the row (``seed``: of a seeded row) runs with: a CF row's CFConfig,
        an LLM row's LLMConfig. :attr:`plan` holds each, resolved once."""
        if row.method is None:
            return self.cf_config(row.cf)
        return self._llm_config(row, seed, row.name)

    def _llm_config(self, row: Row, seed: int | None, source: str) -> LLMConfig:
        """The row's fields over the experiment's ``llm`` block over the reference settings of its
        method and CF model (LLM_DEFAULTS)."""
        d = {**self.llm, **row.settings}
        if seed is not None:
            d["seed"] = seed
        d.update(data=self.data, method=row.method)
        cf_model = None
        if row.cf:
            d["cf"] = str(self.cf_dir(row.cf))
            cf_model = self.cf[row.cf].get("model", row.cf)
        return LLMConfig.for_method(d, cf_model=cf_model, source=source)
