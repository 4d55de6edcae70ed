"""Crashes lose nothing and nothing from a file runs code (issue 17 sections 3 and 4).

- Resume state is safetensors + JSON: a planted pickle (``state.pt``) is refused in one line and
  never unpickled, by ``cora train --resume`` and by ``cora cf train``.
- ``kill -9`` at named moments (``CORA_TEST_KILL_AT``, see :func:`cora.io.kill_point`): mid-write
  of model.safetensors, of the checkpoint folder, between the two renames of its swap, mid-
  validation, mid-step. Resumed, ``cora train``, ``cora cf train`` and ``cora experiment`` end
  with bitwise the tensors, and the logs and metrics, of a run that was never interrupted.
- A finished run drops its checkpoint (stages too) unless ``--keep-checkpoint``.
- A full disk is a one-line error naming the file, the previous checkpoint intact and loadable.
"""

from __future__ import annotations

import errno
import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cora.errors import CoraError
from cora.io import atomic_dir, recover_dir
from cora.safe_state import read_state, write_state
from cora.train.checkpoint import load_checkpoint

from llm_fixtures import tiny_config, tiny_dataset

# Figures that measure the machine (wall clock, throughput, memory), not the training.
TIMING = {"time_s", "time", "samples_per_s", "wall_time_s", "peak_rss_mb", "elapsed_s", "log_bytes", "memory"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("crash")


def _cora(*args) -> subprocess.CompletedProcess:
    """``python -m cora ARGS`` in a fresh process, as a user runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("CORA_TEST_KILL_AT", None)
    return subprocess.run([sys.executable, "-m", "cora", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)


class _ForkServer:
    """Runs ``cora ARGS`` in processes forked from tests/cora_forkserver.py, which imported cora
    once: the same CLI entry point as ``python -m cora``, without ~5 s of imports per run."""

    def __init__(self, logs: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        env.pop("CORA_TEST_KILL_AT", None)
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("cora_forkserver.py"))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.logs, self.n = logs, 0

    def __call__(self, *args, kill: str | None = None) -> subprocess.CompletedProcess:
        self.n += 1
        out, err = self.logs / f"{self.n}.out", self.logs / f"{self.n}.err"
        request = {"args": list(map(str, args)), "env": {"CORA_TEST_KILL_AT": kill} if kill else {},
                   "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        if not select.select([self.proc.stdout], [], [], 300)[0]:
            self.proc.kill()
            raise AssertionError(f"cora {' '.join(request['args'])}: no answer in 300 s")
        line = self.proc.stdout.readline()
        assert line, "the fork server died"
        return subprocess.CompletedProcess(args, int(line), out.read_text(), err.read_text())


@pytest.fixture(scope="module")
def cora(tmp_path_factory):
    server = _ForkServer(tmp_path_factory.mktemp("runs"))
    yield server
    server.proc.kill()  # idle, holds nothing: faster than its interpreter's shutdown
    server.proc.wait(timeout=60)
    server.proc.stdin.close()
    server.proc.stdout.close()


def _killed(done: subprocess.CompletedProcess, where: str) -> None:
    assert done.returncode == -9, f"{where}: expected SIGKILL, got rc {done.returncode}\n{done.stderr[-3000:]}"


def _ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def _same_tensors(a: Path, b: Path) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys() and len(x) > 0
    for k in x:
        assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k


def _records(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in path.read_text().splitlines()]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _same_tree(a, b, where="state"):
    """Bitwise-equal resume states: same structure, same tensors, same numbers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if k not in TIMING:
                _same_tree(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same_tree(x, y, f"{where}/{i}")
    else:
        assert a == b and type(a) is type(b), (where, a, b)


# ----------------------------------------------------------------------------- the state format
def test_state_round_trips_bitwise_without_pickle(tmp_path):
    p = torch.nn.Parameter(torch.randn(3, 4))
    q = torch.nn.Parameter(torch.randn(4, dtype=torch.bfloat16))
    opt = torch.optim.AdamW([{"params": [p], "weight_decay": 0.1}, {"params": [q], "weight_decay": 0.0}], lr=3e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (s + 3))
    for _ in range(3):
        opt.zero_grad()
        (p.sum() * p.sum() + q.float().sum()).backward()
        opt.step()
        sched.step()
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": torch.get_rng_state(),
             "best": {"score": -float("inf"), "step": 0}, "pair": (1, 2.5), "nothing": None, "lr": 1 / 3,
             "ids": {7: "seven"}}
    write_state(tmp_path, "state", state)
    assert sorted(os.listdir(tmp_path)) == ["state.json", "state.safetensors"]
    back = read_state(tmp_path, "state")
    _same_tree(back, state)
    assert back["optimizer"]["state"][0]["step"].dtype == state["optimizer"]["state"][0]["step"].dtype
    # It loads into a fresh optimizer and scheduler: the next step is the same.
    p2, q2 = torch.nn.Parameter(p.detach().clone()), torch.nn.Parameter(q.detach().clone())
    opt2 = torch.optim.AdamW([{"params": [p2]}, {"params": [q2]}], lr=1.0)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1 / (s + 3))
    opt2.load_state_dict(back["optimizer"])
    sched2.load_state_dict(back["scheduler"])
    for o, s, a, b in ((opt, sched, p, q), (opt2, sched2, p2, q2)):
        o.zero_grad()
        (a.sum() * a.sum() + b.float().sum()).backward()
        o.step()
        s.step()
    assert torch.equal(p, p2) and torch.equal(q, q2)


def test_damaged_or_foreign_state_is_one_line_error(tmp_path):
    write_state(tmp_path, "state", {"x": torch.ones(2)})
    (tmp_path / "state.json").write_text('{"format": "cora-resume-0", "state": {}}')
    with pytest.raises(CoraError, match="resume state format 'cora-resume-0'"):
        read_state(tmp_path, "state")
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(CoraError, match=r"state\.json: not a cora resume state"):
        read_state(tmp_path, "state")


# ----------------------------------------------------------------------------- atomic folder swap
@pytest.mark.parametrize("point", ["old-write", "old-swap", "old-swapped"])
def test_a_kill_anywhere_in_a_folder_swap_keeps_one_complete_folder(tmp_path, point):
    target = tmp_path / "old"
    with atomic_dir(target) as tmp:
        (tmp / "f").write_text("previous")
    pid = os.fork()  # a child that only writes files, SIGKILLed at `point` by cora.io.kill_point
    if pid == 0:
        try:
            os.environ["CORA_TEST_KILL_AT"] = f"{point}:1"
            with atomic_dir(target, overwrite=True) as tmp:
                (tmp / "f").write_text("new")
        finally:
            os._exit(1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == -9
    if point == "old-swap":  # between the renames: only the aside copy is there, and it is complete
        assert not target.exists() and (tmp_path / ".old.old" / "f").read_text() == "previous"
    recover_dir(target)
    assert (target / "f").read_text() == ("new" if point == "old-swapped" else "previous")
    # The next write cleans the killed one's temporary up (cora.io.remove_partial).
    from cora.io import remove_partial

    remove_partial(target)
    assert _leftovers(tmp_path) == []


def test_a_swap_that_fails_puts_the_previous_folder_back(tmp_path, monkeypatch):
    import cora.io as io

    target = tmp_path / "old"
    with atomic_dir(target) as tmp:
        (tmp / "f").write_text("previous")

    def fail_at(name):
        if name == "old-swap":
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(io, "kill_point", fail_at)
    with pytest.raises(OSError):
        with atomic_dir(target, overwrite=True) as tmp:
            (tmp / "f").write_text("new")
    assert (target / "f").read_text() == "previous" and _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- no pickles
def _payload(marker: Path, path: Path) -> None:
    """A torch.save file whose unpickling creates ``marker`` (what a hostile state.pt would do)."""

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"optimizer": Payload()}, path)


def _error_line(done: subprocess.CompletedProcess) -> str:
    """The CLI's one-line error (the backbone's loading bar may come before it on stderr)."""
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return errors[0]


def test_planted_pickle_is_refused_and_never_runs(root, tmp_path, cora):
    # The payload is live: the old loader (torch.load, weights_only=False) would run it.
    _payload(tmp_path / "ran-live", tmp_path / "live.pt")
    torch.load(tmp_path / "live.pt", weights_only=False)
    assert (tmp_path / "ran-live").exists()

    cfg = tiny_config(root)
    run = tmp_path / "llm"
    run.mkdir()
    cfg.save(run / "config.yaml")
    cfg.save(tmp_path / "cfg.yaml")
    _payload(tmp_path / "ran-llm", run / "checkpoint" / "state.pt")
    done = _cora("train", "--config", tmp_path / "cfg.yaml", "--out", run, "--resume")
    line = _error_line(done)
    assert f"{run / 'checkpoint' / 'state.pt'}: checkpoint format from an older cora version" in line
    assert "start the run again" in line
    assert not (tmp_path / "ran-llm").exists()

    from cora.config import CFConfig

    data = tiny_dataset(root)
    flags = dict(dim=8, epochs=2, patience=2, batch_size=64)
    cf = tmp_path / "cf"
    cf.mkdir()
    CFConfig.for_model("mf", data=str(data), **flags).save(cf / "config.yaml")
    _payload(tmp_path / "ran-cf", cf / "checkpoint" / "state.pt")
    done = cora("cf", "train", "--data", data, "--model", "mf", "--out", cf, "--dim", 8, "--epochs", 2,
                "--patience", 2, "--batch-size", 64)
    assert f"{cf / 'checkpoint' / 'state.pt'}: checkpoint format from an older cora version" in _error_line(done)
    assert not (tmp_path / "ran-cf").exists()


# ----------------------------------------------------------------------------- kill -9, LLM runs
# Each entry: the kill point of one process and what the run folder must look like after it.
# Every process after the first is `--resume`; counts are per process (cora.io.kill_point).
# max_steps 8, validation (best write, log line, checkpoint) every 2 steps.
LLM_KILLS = [
    ("model.safetensors-write:1", "step 2's first best weights written to a temporary, not renamed"),
    ("checkpoint-write:1", "restarted from scratch (no checkpoint yet); step 2's checkpoint built, not swapped in"),
    ("checkpoint-swap:2", "step 4: the step-2 checkpoint moved aside, step 4's not yet in place"),
    ("predict-batch:3", "resumed from the aside step-2 copy; killed mid-validation at step 4"),
    ("step:3", "resumed from step 2; killed after step 5 (step 4 checkpointed)"),
    ("checkpoint-swapped:1", "step 6's checkpoint in place, step 4's aside not yet deleted"),
    ("train_summary.json-write:1", "steps 7, 8 done and checkpointed; the summary not renamed into place"),
]


def test_kill_9_anywhere_then_resume_equals_an_uninterrupted_run(root, tmp_path, cora):
    cfg = tiny_config(root, max_steps=8, eval_every=2)
    cfg.save(tmp_path / "cfg.yaml")
    args = ["train", "--config", tmp_path / "cfg.yaml", "--keep-checkpoint"]
    _ok(cora(*args, "--out", tmp_path / "ref"))

    run = tmp_path / "killed"
    for i, (point, what) in enumerate(LLM_KILLS):
        done = cora(*args, "--out", run, *(["--resume"] if i else []), kill=point)
        _killed(done, f"{point} ({what})")
        if point == "model.safetensors-write:1":
            assert any(n.startswith(".model.safetensors.") for n in _leftovers(run))
            assert not (run / "checkpoint").exists() and not (run / "model.safetensors").exists()
        elif point == "checkpoint-write:1":
            assert any(n.startswith(".checkpoint.") and n.endswith(".tmp") for n in _leftovers(run))
            assert not (run / "checkpoint").exists()
            assert len((run / "log.jsonl").read_text().splitlines()) == 1  # dropped on resume
        elif point == "checkpoint-swap:2":
            assert not (run / "checkpoint").exists()
            assert read_state(run / ".checkpoint.old", "state")["step"] == 2  # the complete previous one
        elif point == "predict-batch:3":
            assert ".checkpoint.old" not in _leftovers(run) and load_checkpoint(run / "checkpoint")[1]["step"] == 2
        elif point == "checkpoint-swapped:1":
            assert load_checkpoint(run / "checkpoint")[1]["step"] == 6
    _ok(cora(*args, "--out", run, "--resume"))

    # Bitwise the same tensors: best weights, last weights, the whole optimizer / scheduler / RNG state.
    _same_tensors(run / "model.safetensors", tmp_path / "ref" / "model.safetensors")
    _same_tensors(run / "checkpoint" / "trainable.safetensors", tmp_path / "ref" / "checkpoint" / "trainable.safetensors")
    _same_tree(read_state(run / "checkpoint", "state"), read_state(tmp_path / "ref" / "checkpoint", "state"))
    # The same log (each validation once) and summary, timings aside.
    assert _records(run / "log.jsonl") == _records(tmp_path / "ref" / "log.jsonl")
    assert [r["step"] for r in _records(run / "log.jsonl")] == [2, 4, 6, 8]
    summaries = [{k: v for k, v in json.loads((r / "train_summary.json").read_text()).items() if k not in TIMING}
                 for r in (run, tmp_path / "ref")]
    assert summaries[0] == summaries[1] and summaries[0]["steps"] == 8
    # No temporaries or aside copies left; the same files as the uninterrupted run.
    assert _leftovers(run) == [] and sorted(os.listdir(run)) == sorted(os.listdir(tmp_path / "ref"))
    # The same metrics.
    from cora.train.run import evaluate_run

    a, b = (evaluate_run(r, "test", show_progress=False) for r in (run, tmp_path / "ref"))
    assert (a["auc"], a["uauc"], a["warm"]) == (b["auc"], b["uauc"], b["warm"])


def test_checkpoints_between_validations_resume_mid_interval_and_change_nothing(root, tmp_path, cora):
    """checkpoint_every_min 0: a checkpoint after every step, validations every 4. A kill after
    step 3 resumes from step 3 (not from the start), carrying the losses since the last validation,
    and the run ends as one that saved only at validations: same tensors, same log (mean losses
    included), same summary. The interval is bookkeeping: a resume may change it."""
    ref_cfg = tiny_config(root, max_steps=6, eval_every=4)  # checkpoints at validations only (10 min)
    ref_cfg.save(tmp_path / "ref.yaml")
    _ok(cora("train", "--config", tmp_path / "ref.yaml", "--keep-checkpoint", "--out", tmp_path / "ref"))

    often = tiny_config(root, max_steps=6, eval_every=4, checkpoint_every_min=0)
    often.save(tmp_path / "often.yaml")
    run = tmp_path / "killed"
    _killed(cora("train", "--config", tmp_path / "often.yaml", "--keep-checkpoint", "--out", run, kill="step:4"),
            "after step 4's optimizer step, before its validation")
    state = load_checkpoint(run / "checkpoint")[1]
    assert state["step"] == 3 and len(state["running"]) == 3 and not (run / "log.jsonl").read_text()
    # Resumed with the reference's interval: the field is not compared.
    _ok(cora("train", "--config", tmp_path / "ref.yaml", "--keep-checkpoint", "--out", run, "--resume"))

    _same_tensors(run / "model.safetensors", tmp_path / "ref" / "model.safetensors")
    _same_tensors(run / "checkpoint" / "trainable.safetensors", tmp_path / "ref" / "checkpoint" / "trainable.safetensors")
    assert _records(run / "log.jsonl") == _records(tmp_path / "ref" / "log.jsonl")
    assert [r["step"] for r in _records(run / "log.jsonl")] == [4, 6]
    summaries = [{k: v for k, v in json.loads((r / "train_summary.json").read_text()).items() if k not in TIMING}
                 for r in (run, tmp_path / "ref")]
    assert summaries[0] == summaries[1]


# ----------------------------------------------------------------------------- kill -9, CF runs
CF_KILLS = [
    "model.safetensors.part-write:1",  # epoch 0's best weights not renamed; no checkpoint yet
    "cf-epoch:2",                      # mid-run: epoch 1 trained, not validated
    "checkpoint-swap:2",               # between the renames of a checkpoint swap
    "checkpoint-write:1",              # a checkpoint built, not swapped in
    "checkpoint-swapped:1",            # swapped in, the old aside not yet deleted
    "predictions-test.parquet-write:1",  # all epochs done, model.safetensors in place, metrics not written
]


def test_cf_kill_9_anywhere_then_rerun_equals_an_uninterrupted_run(root, tmp_path, cora):
    data = tiny_dataset(root)
    args = ["cf", "train", "--data", data, "--model", "mf", "--dim", 8, "--epochs", 6, "--patience", 6,
            "--batch-size", 16, "--lr", 0.05, "--seed", 5]
    _ok(cora(*args, "--out", tmp_path / "ref"))
    run = tmp_path / "killed"
    for point in CF_KILLS:
        _killed(cora(*args, "--out", run, kill=point), point)  # CF runs resume by default
        if point == "checkpoint-swap:2":
            assert not (run / "checkpoint").exists() and (run / ".checkpoint.old" / "state.json").exists()
    assert not (run / "metrics.json").exists()
    _ok(cora(*args, "--out", run))
    ref = tmp_path / "ref"
    _same_tensors(run / "model.safetensors", ref / "model.safetensors")
    assert _records(run / "log.jsonl") == _records(ref / "log.jsonl") and len(_records(ref / "log.jsonl")) == 6
    m, r = (json.loads((d / "metrics.json").read_text()) for d in (run, ref))
    for split in ("valid", "test"):
        assert m[split] == r[split]
    assert {k: v for k, v in m["train"].items() if k not in TIMING} == {k: v for k, v in r["train"].items()
                                                                       if k not in TIMING}
    assert not (run / "checkpoint").exists() and _leftovers(run) == []
    assert sorted(os.listdir(run)) == sorted(os.listdir(ref))


# ----------------------------------------------------------------------------- kill -9, experiments
def test_killed_experiment_row_resumes_and_finished_rows_are_not_redone(root, tmp_path, cora):
    from test_experiment import tiny_experiment

    def write(out: str) -> Path:
        d = tiny_experiment(root, out=str(tmp_path / out), plots=[])
        d["llm"].update(max_steps=6)
        d["rows"] = [{"name": "MF", "cf": "mf"}, {"name": "CoRA-MF", "method": "cora", "cf": "mf"}]
        path = tmp_path / f"{out}.yaml"
        path.write_text(yaml.safe_dump(d))
        return path

    _ok(cora("experiment", write("ref")))
    exp = tmp_path / "exp"
    _killed(cora("experiment", write("exp"), kill="step:5"), "CoRA-MF row at step 5")
    mf_stamp = (exp / "cf-mf" / "model.safetensors").stat().st_mtime_ns
    mf_log = (exp / "cf-mf" / "log.jsonl").read_text()
    assert not (exp / "cora-mf" / "train_summary.json").exists() and (exp / "cora-mf" / "checkpoint").exists()
    _ok(cora("experiment", write("exp")))
    # The finished MF row is not redone; the killed row resumed to the uninterrupted result.
    assert (exp / "cf-mf" / "model.safetensors").stat().st_mtime_ns == mf_stamp
    assert (exp / "cf-mf" / "log.jsonl").read_text() == mf_log
    _same_tensors(exp / "cora-mf" / "model.safetensors", tmp_path / "ref" / "cora-mf" / "model.safetensors")
    assert _records(exp / "cora-mf" / "log.jsonl") == _records(tmp_path / "ref" / "cora-mf" / "log.jsonl")
    a, b = (json.loads((d / "results.json").read_text())["rows"] for d in (exp, tmp_path / "ref"))
    assert [(r["method"], r["auc"], r["uauc"]) for r in a] == [(r["method"], r["auc"], r["uauc"]) for r in b]
    assert not (exp / "cora-mf" / "checkpoint").exists() and _leftovers(exp / "cora-mf") == []


# ----------------------------------------------------------------------------- dead state
def test_finished_runs_drop_their_checkpoints_unless_kept(root, tmp_path):
    from cora.train.run import train_run

    cfg = tiny_config(root, method="collm", max_steps=2, eval_every=2)
    train_run(cfg, tmp_path / "drop", show_progress=False)
    train_run(cfg, tmp_path / "keep", show_progress=False, keep_checkpoint=True)
    for stage in ("stage-1-lora", "stage-2-mapping"):
        assert not (tmp_path / "drop" / stage / "checkpoint").exists()
        assert (tmp_path / "drop" / stage / "model.safetensors").exists()
        assert load_checkpoint(tmp_path / "keep" / stage / "checkpoint")[1]["step"] == 2
    assert not (tmp_path / "drop" / "checkpoint").exists() and _leftovers(tmp_path / "drop") == []
    # A kill between the summary and the deletion: resuming the finished run deletes it.
    os.rename(tmp_path / "keep" / "stage-1-lora" / "checkpoint", tmp_path / "drop" / "stage-1-lora" / "checkpoint")
    assert train_run(cfg, tmp_path / "drop", resume=True, show_progress=False)["steps"] == 4
    assert not (tmp_path / "drop" / "stage-1-lora" / "checkpoint").exists()


# ----------------------------------------------------------------------------- full disk
def _full_disk_on(monkeypatch, when):
    """safetensors writes fail like a full disk (half the bytes out, then ENOSPC) when ``when(path)``."""
    import cora.safe_state as safe_state

    real = safe_state.save_file

    def save_file(tensors, filename, *a, **kw):
        if when(Path(filename)):
            real(tensors, filename, *a, **kw)
            size = os.path.getsize(filename)
            os.truncate(filename, size // 2)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, *a, **kw)

    monkeypatch.setattr(safe_state, "save_file", save_file)


def test_full_disk_mid_checkpoint_is_one_line_and_keeps_the_previous_checkpoint(root, tmp_path, monkeypatch):
    from cora.train.run import evaluate_run, train_run

    cfg = tiny_config(root, max_steps=4, eval_every=2)
    run = tmp_path / "run"
    _full_disk_on(monkeypatch, lambda p: p.name == "state.safetensors" and (run / "checkpoint").exists())
    with pytest.raises(CoraError) as e:
        train_run(cfg, run, show_progress=False)
    msg = str(e.value)
    assert msg == (f"no space left on device writing {run / 'checkpoint' / 'state.safetensors'} "
                   "(the previous checkpoint/, if any, is untouched)")
    assert "\n" not in msg and _leftovers(run) == []
    trainable, state = load_checkpoint(run / "checkpoint")  # step 2's, whole
    assert state["step"] == 2 and len(trainable) > 0
    monkeypatch.undo()
    assert train_run(cfg, run, resume=True, show_progress=False)["steps"] == 4

    # The best weights: the previous file stays as it was.
    before = (run / "model.safetensors").read_bytes()
    from cora.train.checkpoint import save_tensors

    _full_disk_on(monkeypatch, lambda p: p.name.startswith(".model.safetensors."))
    with pytest.raises(CoraError, match=r"no space left on device writing .*model\.safetensors \(the previous"):
        save_tensors(run / "model.safetensors", {"x": torch.zeros(10)})
    assert (run / "model.safetensors").read_bytes() == before and _leftovers(run) == []
    monkeypatch.undo()

    # Predictions: a one-line error naming the file; the earlier predictions and metrics stay.
    evaluate_run(run, "test", show_progress=False)
    preds, metrics = (run / "predictions-test.parquet").read_bytes(), (run / "metrics.json").read_bytes()
    import pandas as pd

    def full(self, path, *a, **kw):
        Path(path).write_bytes(b"PAR1 half")
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    with pytest.raises(CoraError) as e:
        evaluate_run(run, "test", show_progress=False)
    assert str(e.value).startswith(f"no space left on device writing {run / 'predictions-test.parquet'} (")
    assert (run / "predictions-test.parquet").read_bytes() == preds and (run / "metrics.json").read_bytes() == metrics
    assert _leftovers(run) == []


def test_cf_full_disk_mid_checkpoint_keeps_the_previous_one(root, tmp_path, monkeypatch):
    from cora.cf.train import train_cf
    from cora.config import CFConfig

    cfg = CFConfig.for_model("mf", data=str(tiny_dataset(root)), dim=8, epochs=3, patience=3, batch_size=64)
    run = tmp_path / "cf"
    _full_disk_on(monkeypatch, lambda p: p.name == "state.safetensors" and (run / "checkpoint").exists())
    with pytest.raises(CoraError, match=r"no space left on device writing .*checkpoint/state\.safetensors"):
        train_cf(cfg, run, show_progress=False)
    assert read_state(run / "checkpoint", "state")["epoch"] == 0 and _leftovers(run) == []
    monkeypatch.undo()
    assert train_cf(cfg, run, show_progress=False)["train"]["epochs_run"] == 3


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    """mkstemp / mkdtemp make private 0600 / 0700 temporaries; what is renamed into place must
    carry the modes the umask gives any other file (a shared results folder must be readable)."""
    from cora.io import atomic_dir, write_json

    umask = os.umask(0)
    os.umask(umask)
    write_json(tmp_path / "a.json", {"x": 1})
    (tmp_path / "plain").write_text("x")
    with atomic_dir(tmp_path / "run") as d:
        (d / "f").write_text("x")
    (tmp_path / "plain-dir").mkdir()
    # safetensors replaces the file it is given by a new 0600 one: the rename must still give umask modes.
    import torch

    from cora.train.checkpoint import save_checkpoint, save_tensors

    save_tensors(tmp_path / "m.safetensors", {"w": torch.zeros(2)})
    save_checkpoint(tmp_path / "ckpt", {"w": torch.zeros(2)}, {"step": 1})
    for f in (tmp_path / "m.safetensors", tmp_path / "ckpt" / "trainable.safetensors"):
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "run").stat().st_mode & 0o777 == (tmp_path / "plain-dir").stat().st_mode & 0o777
