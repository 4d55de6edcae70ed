"""A whole machine (issue 31 item 2): `cora experiment --jobs N --gpus 0,1,...` gives each worker its
own GPU through CUDA_VISIBLE_DEVICES, in the CF / stage-donor order; the ids are given back as
workers end; a distributed launch of `cora experiment` is refused with the command to run instead.
The workers are stand-ins (no GPU is needed to test who gets which)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cora.errors import CoraError
from cora.experiment import command, parallel
from cora.experiment.parallel import Task


class FakeProc:
    """A worker that runs for ``steps`` polls."""
    started: list[tuple[str, str | None]] = []

    def __init__(self, args, env=None, **kwargs):
        self.task = args[args.index("--task") + 1]
        self.args = args
        FakeProc.started.append((self.task, (env or {}).get("CUDA_VISIBLE_DEVICES")))
        self.left, self.returncode, self.pid = 2, None, 0

    def poll(self):
        self.left -= 1
        if self.left <= 0:
            self.returncode = 0
        return self.returncode


def _run(tmp_path, monkeypatch, tasks, jobs, gpus):
    FakeProc.started = []
    monkeypatch.setattr(parallel.subprocess, "Popen", FakeProc)
    monkeypatch.setattr(parallel, "plan_tasks", lambda exp, only: [Task(n, needs) for n, needs in tasks])
    exp = SimpleNamespace(out=str(tmp_path))
    states = parallel.run_parallel(exp, tmp_path / "x.yaml", jobs, placement=["--device", "cuda"], poll_s=0,
                                   gpus=gpus)
    return states, FakeProc.started


def test_each_worker_gets_its_own_gpu_and_gives_it_back(tmp_path, monkeypatch):
    tasks = [("cf:mf", []), ("TALLRec", []), ("CoRA-MF#1", ["cf:mf"]), ("CoRA-MF#2", ["cf:mf"]),
             ("CoLLM-MF", ["cf:mf", "TALLRec"])]
    states, started = _run(tmp_path, monkeypatch, tasks, jobs=2, gpus=["2", "5"])
    assert set(states.values()) == {"done"}
    assert [t for t, _ in started][:2] == ["cf:mf", "TALLRec"]  # the file's order, needs first
    assert {g for _, g in started} == {"2", "5"}
    # never two workers on one GPU at a time: a GPU is handed out again only after its worker ended
    assert started[0][1] != started[1][1]
    assert started.index(("CoLLM-MF", started[-1][1])) == len(started) - 1  # it waited for TALLRec


def test_an_id_listed_twice_is_shared_by_two_workers(tmp_path, monkeypatch):
    _, started = _run(tmp_path, monkeypatch, [("A", []), ("B", []), ("C", [])], jobs=3, gpus=["0", "0", "1"])
    assert sorted(g for _, g in started) == ["0", "0", "1"]


def test_gpu_options_are_checked_in_one_line(tmp_path):
    config = tmp_path / "e.yaml"
    with pytest.raises(CoraError, match="--gpus 'a,b': write GPU ids separated by commas"):
        command.run_command(config, gpus="a,b")
    with pytest.raises(CoraError, match=r"--jobs 3 with --gpus 0,1: one worker per listed GPU; .* --gpus 0,1,0,1"):
        command.run_command(config, gpus="0,1", jobs=3)
    with pytest.raises(CoraError, match="--device cpu contradicts it"):
        command.run_command(config, gpus="0", device="cpu")


def test_a_distributed_launch_is_refused_with_the_command_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(CoraError) as err:
        command.run_command(tmp_path / "e.yaml")
    assert "cora experiment" in str(err.value) and "--jobs 4 --gpus 0,1,2,3" in str(err.value)


def test_trained_on_names_the_machines_gpu(monkeypatch):
    import torch

    from cora.config import LLMConfig
    from cora.train.loop import hardware

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    cfg = LLMConfig(data="d", dtype="fp32", tf32=True)
    assert hardware(torch.device("cuda", 0), cfg) == "NVIDIA H100 80GB HBM3 (GPU 5) tf32"
