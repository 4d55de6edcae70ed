"""Bad input never reaches a traceback (issue 17, section 2).

One table of bad inputs across every command: each must exit non-zero with at most 3 lines of
output, no traceback, the file or field named, nothing left behind (no --out, no new file in a
run folder), and never through ``cli.main``'s safety net ("unexpected error"), which is for bugs.
Then the settings table itself (:mod:`cora.ranges`): every config field has an entry, and the
entries agree with the modules that own the choices.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import typing
from pathlib import Path

import pytest
import yaml

from cora import cli
from cora.cf.train import train_cf
from cora.config import CFConfig, LLMConfig
from cora.data.store import write_dataset
from cora.errors import CoraError
from cora.ranges import RANGES, check_value
from cora.experiment.spec import Experiment
from cora.train.run import evaluate_run, train_run

from helpers import main_in_process, run_cli, synthetic_splits
from llm_fixtures import tiny_backbone_folder, tiny_cf_run, tiny_config, tiny_dataset

MAX_LINES = 3


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def fx(run, root) -> dict[str, str]:
    """Paths the cases refer to: the trained tiny CoRA run (conftest), its dataset, CF run and
    backbone, a TALLRec run (another method), and an MF run of another dataset."""
    other = root / "data-other"
    write_dataset(other, synthetic_splits(seed=5, n_users=20, n_items=40), name="other", domain="books")
    cf_other = root / "cf-other"
    train_cf(CFConfig.for_model("mf", data=str(other), dim=8, epochs=1, patience=1, batch_size=64), cf_other,
             show_progress=False)
    evaluate_run(run, "test", show_progress=False)  # metrics.json, for the report cases
    tallrec = root / "run-tallrec"
    train_run(tiny_config(root, method="tallrec", max_steps=2, eval_every=2, warmup_steps=1), tallrec,
              show_progress=False)
    return {"run": str(run), "data": str(tiny_dataset(root)), "cf": str(tiny_cf_run(root)),
            "bb": str(tiny_backbone_folder(root)), "tallrec": str(tallrec), "cf_other": str(cf_other),
            "data_other": str(other)}


@pytest.fixture(autouse=True)
def _no_server(monkeypatch):
    """A serve case that wrongly passed its checks would block the suite on a live server."""
    import uvicorn

    def refuse(*a, **k):
        raise AssertionError("the server started: the case was not refused")

    monkeypatch.setattr(uvicorn, "run", refuse)
    monkeypatch.setattr(uvicorn.Server, "run", refuse)
    monkeypatch.setattr(uvicorn.Server, "serve", refuse)
    try:
        import cora.serve.server

        monkeypatch.setattr(cora.serve.server, "serve", refuse)
    except ImportError:  # older layout: cli.serve_cmd calls uvicorn.run itself
        pass
    monkeypatch.delenv("CORA_DEBUG", raising=False)
    monkeypatch.setattr(cli, "_debug", False)


# ----------------------------------------------------------------------------- setups
# A setup prepares bad files in the case's own folder ``t`` and returns placeholders for its argv.
def _copy(src: str, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edit_yaml(path: Path, **changes) -> None:
    d = yaml.safe_load(path.read_text())
    d.update(changes)
    path.write_text(yaml.safe_dump(d))


def data_copy(mutate):
    def setup(f, t):
        bad = _copy(f["data"], t / "data")
        mutate(bad)
        return {"bad": str(bad)}
    return setup


def run_copy(mutate, src="run"):
    def setup(f, t):
        bad = _copy(f[src], t / "badrun")
        mutate(bad, f, t)
        return {"bad": str(bad)}
    return setup


def text_file(name: str, text: str):
    def setup(f, t):
        (t / name).write_text(text.format(**f, t=t))
        return {"bad": str(t / name)}
    return setup


def experiment_file(**changes):
    def setup(f, t):
        d = {"name": "x", "data": f["data"], "out": str(t / "exp-out"),
             "llm": {"backbone": f["bb"], "rank": 4, "gen_layers": 1, "gen_heads": 2, "gen_ffn": 32},
             "cf": {"mf": {"model": "mf", "dim": 8}},
             "rows": [{"name": "MF", "cf": "mf"}, {"name": "CoRA", "method": "cora", "cf": "mf"}]}
        for k, v in changes.items():
            v(d) if callable(v) else d.update({k: v})
        (t / "exp.yaml").write_text(yaml.safe_dump(d))
        return {"bad": str(t / "exp.yaml")}
    return setup


def row(i: int, **fields):
    return lambda d: d["rows"][i].update(fields)


def mkdir(f, t):
    (t / "empty").mkdir()
    return {"bad": str(t / "empty")}


def mkfile(f, t):
    (t / "out").write_text("a file, not a folder\n")
    return {"bad": str(t / "out")}


def foreign_split(f, t):
    """A dataset folder whose train.parquet was copied in from another dataset (more items)."""
    bad = _copy(f["data"], t / "data")
    shutil.copy(Path(f["data_other"]) / "train.parquet", bad / "train.parquet")
    return {"bad": str(bad)}


def other_method_weights(bad, f, t):
    shutil.copy(Path(f["tallrec"]) / "model.safetensors", bad / "model.safetensors")


def dataset_without_meta(bad, f, t):
    data = _copy(f["data"], t / "data")
    (data / "meta.json").unlink()
    _edit_yaml(bad / "config.yaml", data=str(data))


RATINGS = "user,item,rating,timestamp\n1,1,5,978300760\n2,1,3,978300761\n"
TRAIN = "train --data {data} --cf {cf} --backbone {bb} --max-steps 2 --eval-every 2 --out {t}/out"
RUN = "{run}"
PAIRS = "score {run} --pairs {bad} --out {t}/scores.parquet"

# (id, setup or None, argv, needles that must be in the output). Placeholders: the fixture paths,
# {t} (the case's folder) and what the setup returns ({bad}).
CASES = [
    # ---- data
    ("data-info-meta-cut", data_copy(lambda d: _cut(d / "meta.json")), "data info {bad}",
     ["{bad}/meta.json", "not valid JSON"]),
    ("data-info-no-meta", mkdir, "data info {bad}", ["{bad}", "no meta.json"]),
    ("data-info-meta-field", data_copy(lambda d: (d / "meta.json").write_text('{"name": "x", "domain": "movies"}')),
     "data info {bad}", ["{bad}/meta.json", "'n_users'"]),
    ("data-info-meta-list", data_copy(lambda d: (d / "meta.json").write_text("[1, 2]")), "data info {bad}",
     ["{bad}/meta.json", "expected a JSON object"]),
    ("data-import-cut-zip", text_file("cut.zip", "PK\x03\x04 not really a zip"),
     "data import-collm {bad} --out {t}/out --trust-pickle", ["{bad}", "not a readable zip file"]),
    ("data-interactions-seed", text_file("r.csv", RATINGS), "data import-interactions {bad} --out {t}/out --seed -3",
     ["--seed", "-3"]),
    ("data-interactions-threshold", text_file("r.csv", RATINGS),
     "data import-interactions {bad} --out {t}/out --positive-threshold nan", ["--positive-threshold", "nan"]),
    ("data-prepare-missing", None, "data prepare movielens --raw {t}/nope.zip --out {t}/out", ["{t}/nope.zip"]),
    # ---- cf
    ("cf-train-cut-parquet", data_copy(lambda d: _cut(d / "train.parquet")), "cf train --data {bad} --out {t}/out",
     ["{bad}/train.parquet", "not a readable Parquet file"]),
    ("cf-train-lr", None, "cf train --data {data} --out {t}/out --lr -1", ["--lr", "> 0"]),
    ("cf-train-batch", None, "cf train --data {data} --out {t}/out --batch-size 0", ["--batch-size", ">= 1"]),
    ("cf-train-dim", None, "cf train --data {data} --out {t}/out --dim 0", ["--dim", ">= 1"]),
    ("cf-train-wd", None, "cf train --data {data} --out {t}/out --wd -0.5", ["--wd", "from 0 to 1"]),
    ("cf-train-model", None, "cf train --data {data} --out {t}/out --model bpr", ["--model", "'bpr'"]),
    ("cf-train-no-data", mkdir, "cf train --data {bad} --out {t}/out", ["{bad}", "no meta.json"]),
    ("cf-eval-corrupt", run_copy(lambda b, f, t: _cut(b / "model.safetensors"), src="cf"), "cf evaluate {bad}",
     ["{bad}/model.safetensors", "not a readable safetensors file"]),
    ("cf-eval-config", run_copy(lambda b, f, t: _edit_yaml(b / "config.yaml", dim=-3), src="cf"), "cf evaluate {bad}",
     ["{bad}/config.yaml", "'dim'", ">= 1"]),
    ("cf-eval-llm-run", None, "cf evaluate {run}", ["{run}", "an LLM run, not a CF run"]),
    ("cf-eval-limit", None, "cf evaluate {cf} --limit 0", ["--limit", ">= 1"]),
    # ---- train
    ("train-batch", None, TRAIN + " --batch-size 0", ["--batch-size", ">= 1"]),
    ("train-rank", None, TRAIN + " --rank 0", ["--rank", ">= 1"]),
    ("train-lr", None, TRAIN + " --lr -1", ["--lr", "> 0"]),
    ("train-dtype", None, TRAIN + " --dtype fp8", ["--dtype", "fp32, bf16, fp16"]),
    ("train-modules", None, TRAIN + " --modules xyz", ["--modules", "letters from q, k, v, o, f"]),
    ("train-eval-every", None, TRAIN + " --eval-every 0", ["--eval-every", ">= 1"]),
    ("train-device", None, TRAIN + " --device tpu", ["--device", "cpu, cuda"]),
    ("train-method", None, TRAIN + " --method nope", ["--method", "'nope'"]),
    ("train-rank-text", None, TRAIN + " --rank abc", ["--rank", "integer"]),
    ("train-config-lr", text_file("c.yaml", "lr: -0.1\n"), TRAIN + " --config {bad}", ["{bad}", "'lr'", "> 0"]),
    ("train-config-type", text_file("c.yaml", "lr: fast\n"), TRAIN + " --config {bad}", ["{bad}", "'lr'", "'fast'"]),
    ("train-config-dropout", text_file("c.yaml", "lora_dropout: 1.5\n"), TRAIN + " --config {bad}",
     ["{bad}", "'lora_dropout'", "< 1"]),
    ("train-config-list", text_file("c.yaml", "- lr\n- 0.1\n"), TRAIN + " --config {bad}",
     ["{bad}", "expected a mapping"]),
    ("train-config-missing", None, TRAIN + " --config {t}/nope.yaml", ["{t}/nope.yaml", "not found"]),
    ("train-config-gen-heads", text_file("c.yaml", "gen_heads: 3\n"), TRAIN + " --config {bad}",
     ["gen_heads 3", "divide"]),
    ("train-cut-parquet", data_copy(lambda d: _cut(d / "train.parquet")),
     "train --data {bad} --cf {cf} --backbone {bb} --out {t}/out", ["{bad}/train.parquet", "Parquet"]),
    ("train-no-meta", mkdir, "train --data {bad} --cf {cf} --backbone {bb} --out {t}/out", ["{bad}", "no meta.json"]),
    ("train-cf-other-dataset", None, "train --data {data} --cf {cf_other} --backbone {bb} --out {t}/out",
     ["{cf_other}", "another dataset"]),
    ("train-cf-is-llm-run", None, "train --data {data} --cf {run} --backbone {bb} --out {t}/out",
     ["{run}", "an LLM run, not a CF run"]),
    ("train-stage-donor", mkdir, "train --data {data} --cf {cf} --backbone {bb} --method collm --max-steps 2 "
     "--eval-every 2 --out {t}/out --stage-from lora={bad}", ["{bad}", "no finished run"]),
    ("train-out-is-file", mkfile, TRAIN.replace("{t}/out", "{bad}"), ["{bad}", "not a folder"]),
    ("train-config-cf-type", text_file("c.yaml", "cf: 5\n"), TRAIN.replace("--cf {cf} ", "") + " --config {bad}",
     ["{bad}", "'cf' = 5"]),
    ("cf-train-foreign-parquet", foreign_split, "cf train --data {bad} --out {t}/out",
     ["{bad}/train.parquet", "'uid' ids", "another dataset"]),
    ("train-backbone-missing", None, "train --data {data} --cf {cf} --backbone {t}/nope --out {t}/out",
     ["{t}/nope", "no such file"]),
    # ---- evaluate
    ("eval-corrupt-weights", run_copy(lambda b, f, t: _cut(b / "model.safetensors")), "evaluate {bad}",
     ["{bad}/model.safetensors", "not a readable safetensors file"]),
    ("eval-other-method", run_copy(other_method_weights), "evaluate {bad}",
     ["{bad}/model.safetensors", "method 'cora'"]),
    ("eval-other-shape", run_copy(lambda b, f, t: _edit_yaml(b / "config.yaml", rank=2)), "evaluate {bad}",
     ["{bad}/model.safetensors", "has shape"]),
    ("eval-config-lr", run_copy(lambda b, f, t: _edit_yaml(b / "config.yaml", lr=-1.0)), "evaluate {bad}",
     ["{bad}/config.yaml", "'lr'"]),
    ("eval-config-list", run_copy(lambda b, f, t: (b / "config.yaml").write_text("- a\n- b\n")), "evaluate {bad}",
     ["{bad}/config.yaml", "expected a mapping"]),
    ("eval-no-meta", run_copy(dataset_without_meta), "evaluate {bad}", ["no meta.json"]),
    ("eval-cf-run", None, "evaluate {cf}", ["{cf}", "a CF run, not an LLM run"]),
    ("eval-not-a-run", mkdir, "evaluate {bad}", ["{bad}", "no config.yaml"]),
    ("eval-limit", None, "evaluate {run} --limit 0", ["--limit", ">= 1"]),
    ("eval-per-user", None, "evaluate {run} --limit 10 --per-user 1", ["--per-user", ">= 2"]),
    ("eval-ranking-k", None, "evaluate {run} --ranking --k 0", ["--k", ">= 1"]),
    # ---- report
    ("report-not-a-run", mkdir, "report {bad}", ["{bad}"]),
    ("report-metrics-cut", run_copy(lambda b, f, t: _cut(b / "metrics.json")), "report {bad}",
     ["{bad}/metrics.json", "not valid JSON"]),
    ("report-metrics-list", run_copy(lambda b, f, t: (b / "metrics.json").write_text("[]")), "report {bad}",
     ["{bad}/metrics.json", "JSON object"]),
    ("report-split", None, "report {run} --split nope", ["'nope'"]),
    ("report-bootstrap-seed", None, "report {run} --bootstrap-seed -1", ["--bootstrap-seed", "-1"]),
    ("report-plot", None, "report {run} --plot pie --out {t}/r.md", ["'pie'"]),
    # ---- experiment
    ("exp-row-field", experiment_file(rows=row(1, lr=-1)), "experiment {bad}", ["{bad}", "rows[1]", "'lr'"]),
    ("exp-row-type", experiment_file(rows=row(1, batch_size="eight")), "experiment {bad}",
     ["{bad}", "rows[1]", "'batch_size'"]),
    ("exp-row-not-mapping", experiment_file(rows=lambda d: d["rows"].append("MF2")), "experiment {bad}",
     ["{bad}", "rows[2]", "mapping"]),
    ("exp-seeds", experiment_file(rows=row(1, seeds=[-5, 2])), "experiment {bad}", ["{bad}", "rows[1]", "seeds"]),
    # CoLLM's zip holds pickles: an experiment that would import one must say it trusts it.
    ("exp-source-untrusted", experiment_file(
        source=lambda d: d.update(source=d["out"] + "-collm.zip", data=d["out"] + "-data")),
     "experiment {bad}", ["collm.zip", "trust_pickle: true"]),
    ("exp-test-limit", experiment_file(test_limit=0), "experiment {bad}", ["{bad}", "'test_limit'"]),
    ("exp-llm-dtype", experiment_file(llm={"dtype": "fp8"}), "experiment {bad}", ["{bad}", "llm", "'dtype'"]),
    ("exp-cf-field", experiment_file(cf={"mf": {"model": "mf", "dim": "big"}}), "experiment {bad}",
     ["{bad}", "cf.mf", "'dim'"]),
    ("exp-not-mapping", text_file("exp.yaml", "- just\n- a list\n"), "experiment {bad}",
     ["{bad}", "expected a mapping"]),
    # ---- recommend
    ("rec-user", None, "recommend {run} --user -5 --internal-ids", ["--user", ">= 1"]),
    ("rec-k", None, "recommend {run} --user 3 --k 0", ["--k", ">= 1"]),
    ("rec-candidates", None, "recommend {run} --user 3 --k 5 --candidates 2", ["candidates (2)"]),
    ("rec-unknown-user", None, "recommend {run} --user 4242", ["unknown user '4242'"]),
    ("rec-corrupt", run_copy(lambda b, f, t: _cut(b / "model.safetensors")), "recommend {bad} --user 3",
     ["{bad}/model.safetensors"]),
    # ---- score
    ("score-missing-column", text_file("p.csv", "user,itm\n1,2\n"), PAIRS, ["{bad}", "no item column"]),
    ("score-not-int", text_file("p.csv", "user,item\n1,2\n1,x\n"), PAIRS,
     ["{bad}", "column 'item', line 3", "unknown item 'x'"]),
    ("score-out-of-range", text_file("p.csv", "user,item\n1,2\n1,777\n"), PAIRS, ["{bad}", "unknown item '777'"]),
    ("score-empty", text_file("p.csv", ""), PAIRS, ["{bad}", "empty"]),
    ("score-missing-file", None, "score {run} --pairs {t}/nope.csv --out {t}/s.parquet", ["{t}/nope.csv"]),
    ("score-batch", text_file("p.csv", "user,item\n1,2\n"), PAIRS + " --batch-size 0", ["--batch-size"]),
    # ---- serve
    ("score-out-is-folder", text_file("p.csv", "user,item\n1,2\n"), "score {run} --pairs {bad} --out {t}",
     ["{t}", "is a folder"]),
    ("serve-port", None, "serve {run} --port 70000", ["--port", "0 to 65535"]),
    ("serve-max-batch", None, "serve {run} --max-batch 0", ["--max-batch"]),
    ("serve-wait", None, "serve {run} --max-wait-ms -1", ["--max-wait-ms"]),
    ("serve-not-a-run", mkdir, "serve {bad}", ["{bad}", "no config.yaml"]),
    ("serve-other-method", run_copy(other_method_weights), "serve {bad}", ["{bad}/model.safetensors"]),
]


def _tree(*folders) -> dict[str, tuple[int, int]]:
    """Every file under ``folders`` with its size and mtime: what a command must leave unchanged."""
    out = {}
    for folder in folders:
        for p in Path(folder).rglob("*"):
            out[str(p)] = (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
    return out


def _cli(monkeypatch, capsys, argv: list[str]) -> tuple[int, str]:
    code, out, err = main_in_process(monkeypatch, capsys, *argv, columns=300)
    return code, out + err


def _prepare(case, fx, t):
    name, setup, argv, needles = case
    values = {**fx, "t": str(t), **(setup(fx, t) if setup else {})}
    return [a.format(**values) for a in shlex.split(argv)], [n.format(**values) for n in needles]


def _check(code: int, output: str, needles: list[str]) -> None:
    # What a user sees: progress bars redraw one line with \r, so lines are counted at \n.
    lines = [x for x in output.split("\n") if x.strip()]
    assert code not in (0, None), output
    assert len(lines) <= MAX_LINES, output
    assert "Traceback" not in output, output
    assert cli.UNEXPECTED not in output, f"only the safety net caught this case:\n{output}"
    flat = output.replace("\n", " ")
    for needle in needles:
        assert needle in flat, f"{needle!r} not in:\n{output}"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(case, fx, tmp_path, monkeypatch, capsys):
    t = tmp_path / "case"
    t.mkdir()
    argv, needles = _prepare(case, fx, t)
    before = _tree(t, fx["run"], fx["cf"], fx["data"])
    code, output = _cli(monkeypatch, capsys, argv)
    _check(code, output, needles)
    assert _tree(t, fx["run"], fx["cf"], fx["data"]) == before, "the failed command left something behind"


def test_the_table_covers_every_command():
    commands = {shlex.split(argv)[0] for _, _, argv, _ in CASES}
    assert commands >= {"data", "cf", "train", "evaluate", "report", "experiment", "recommend", "score", "serve"}
    assert len(CASES) >= 40


# A few cases as a user runs them: the installed entry point in a fresh process.
SHELL_CASES = ["serve-port", "train-cut-parquet", "eval-corrupt-weights", "exp-row-field", "score-missing-column"]


@pytest.mark.parametrize("name", SHELL_CASES)
def test_bad_input_from_a_shell(name, fx, tmp_path):
    t = tmp_path / "case"
    t.mkdir()
    argv, needles = _prepare(next(c for c in CASES if c[0] == name), fx, t)
    before = _tree(t)
    env = {k: v for k, v in os.environ.items() if k != "CORA_DEBUG"}
    res = run_cli(*argv, env={**env, "OMP_NUM_THREADS": "1", "COLUMNS": "300", "HF_HUB_OFFLINE": "1"}, timeout=300)
    _check(res.returncode, res.stdout + res.stderr, needles)
    assert _tree(t) == before


# ----------------------------------------------------------------------------- the safety net
def _boom(*a, **k):
    raise ZeroDivisionError("a bug deep inside")


def test_the_net_catches_an_unexpected_error_in_one_line(fx, monkeypatch, capsys):
    import cora.serve.pairs

    monkeypatch.setattr(cora.serve.pairs, "score_file", _boom)
    code, output = _cli(monkeypatch, capsys, ["score", fx["run"], "--pairs", "p.csv", "--out", "s.parquet"])
    lines = [x for x in output.split("\n") if x.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in output
    assert lines[0].startswith(cli.UNEXPECTED) and "ZeroDivisionError: a bug deep inside" in lines[0]
    assert "--debug" in lines[0]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(fx, monkeypatch, capsys, how):
    import cora.serve.pairs

    monkeypatch.setattr(cora.serve.pairs, "score_file", _boom)
    argv = ["score", fx["run"], "--pairs", "p.csv", "--out", "s.parquet"]
    if how == "flag":
        argv.insert(0, "--debug")
    else:
        monkeypatch.setenv("CORA_DEBUG", "1")
    with pytest.raises(ZeroDivisionError, match="a bug deep inside"):
        _cli(monkeypatch, capsys, argv)


# ----------------------------------------------------------------------------- the settings table
CONFIGS = [LLMConfig, CFConfig, Experiment]
_TYPES = {int: int, float: float, bool: bool, str: str, dict: dict, list: list}


def _base_type(hint) -> tuple[type, bool]:
    """(type, optional) of an annotation such as ``int | None`` or ``list[dict]``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if optional and len(args) == 1:
        hint = args[0]
    return typing.get_origin(hint) or hint, optional


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_field_has_a_range(cls):
    """A new field must get an entry in cora.ranges.RANGES, of its annotated type."""
    table = RANGES[cls.__name__]
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    assert not (missing := [n for n in names if n not in table]), f"add {missing} to cora.ranges.RANGES"
    assert not (stale := [n for n in table if n not in names]), f"{stale} in RANGES are not fields of {cls.__name__}"
    for f in dataclasses.fields(cls):
        kind, optional = _base_type(hints[f.name])
        assert table[f.name].type is _TYPES[kind], f.name
        assert table[f.name].optional == optional, f"{f.name}: optional in the annotation and the table differ"


@pytest.mark.parametrize("cls", [LLMConfig, CFConfig], ids=lambda c: c.__name__)
def test_defaults_are_in_range_and_nonsense_is_refused_for_every_field(cls):
    cfg = cls()
    for f in dataclasses.fields(cls):
        value = getattr(cfg, f.name)
        assert check_value(cls.__name__, f.name, value) == value, f.name
        spec = RANGES[cls.__name__][f.name]
        wrong = {int: "many", float: "fast", bool: "yes", str: 3, dict: [1], list: {"a": 1}}[spec.type]
        with pytest.raises(CoraError, match=f"src: field '{f.name}' = "):
            check_value(cls.__name__, f.name, wrong, "src")
        if spec.lo is not None:  # just below the range
            with pytest.raises(CoraError, match=f"field '{f.name}'"):
                cls.from_dict({f.name: spec.lo - 1}, source="src")


def test_values_are_converted_where_that_is_safe():
    assert check_value("LLMConfig", "lr", "1e-3") == 1e-3  # PyYAML reads 1e-3 (no dot) as a string
    assert check_value("LLMConfig", "lr", 1) == 1.0 and isinstance(check_value("LLMConfig", "lr", 1), float)
    assert check_value("LLMConfig", "data", Path("/x")) == "/x"
    for bad in (True, float("nan"), float("inf")):
        with pytest.raises(CoraError):
            check_value("LLMConfig", "lr", bad)
    with pytest.raises(CoraError, match="'rank' = True"):
        LLMConfig(rank=True)
    cfg = LLMConfig.from_dict({"lr": "2e-4", "max_length": None}, source="x")
    assert cfg.lr == 2e-4 and cfg.max_length is None


def test_choices_are_spelled_once_and_their_modules_implement_exactly_them():
    """cora.config spells each setting's choices (configs are checked without importing torch);
    the modules that implement them cover exactly those choices."""
    from cora import config
    from cora.llm.backbone import DTYPES
    from cora.llm.lowrank import MODULE_LETTERS
    from cora.methods import METHOD_NAMES, method_classes

    assert RANGES["LLMConfig"]["method"].choices == METHOD_NAMES == tuple(method_classes())
    assert set(config.CF_MODELS) == set(config.CF_DEFAULTS)
    assert set(config.DTYPES) == set(DTYPES)
    assert set(config.MODULE_LETTERS) == set(MODULE_LETTERS)


# ----------------------------------------------------------------------------- what a failure leaves
def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(root, tmp_path, monkeypatch):
    import cora.train.run as run_module

    monkeypatch.setattr(run_module, "fit", _boom)
    with pytest.raises(ZeroDivisionError):
        train_run(tiny_config(root), tmp_path / "new", show_progress=False)
    assert not (tmp_path / "new").exists()
    # A folder that was there before keeps what it held; only what the run added goes.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ZeroDivisionError):
        train_run(tiny_config(root), tmp_path / "mine", show_progress=False)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_a_run_that_fails_mid_training_keeps_its_checkpoint(root, tmp_path, monkeypatch):
    import cora.train.loop as loop_module

    real = loop_module.save_loop

    def save_then_fail(*a, **k):
        real(*a, **k)
        raise RuntimeError("the machine went away")

    monkeypatch.setattr(loop_module, "save_loop", save_then_fail)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        train_run(tiny_config(root), out, show_progress=False)
    assert (out / "config.yaml").exists() and (out / "checkpoint").is_dir()  # --resume starts from it


def test_a_cf_run_that_fails_at_once_leaves_nothing(root, tmp_path, monkeypatch):
    import cora.cf.train as cf_module

    monkeypatch.setattr(cf_module, "table_tensors", _boom)
    cfg = CFConfig.for_model("mf", data=str(tiny_dataset(root)), dim=8, epochs=1, patience=1)
    with pytest.raises(ZeroDivisionError):
        train_cf(cfg, tmp_path / "cf", show_progress=False)
    assert not (tmp_path / "cf").exists()
