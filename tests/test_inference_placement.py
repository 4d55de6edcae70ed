"""Where a trained run scores (issue 33 item 2, issue 31 item 1): `recommend`, `score` and `serve`
take --device / --dtype / --threads; a run trained on a GPU scores on a CPU-only machine; bf16 on
a CPU without bf16 units falls back to fp32 in one line; the thread count is set."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from fastapi.testclient import TestClient

from cora.errors import CoraError
from cora.serve import placement
from cora.serve.app import create_app
from cora.serve.placement import Placement, resolve

from helpers import main_in_process


@pytest.fixture(autouse=True)
def _keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_gpu_run_scores_on_the_cpu_of_a_machine_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    said = []
    got = resolve(Placement(), "cuda:1", "fp32", said.append)
    assert (got.device, got.dtype) == ("cpu", "fp32")
    assert said == ["the run trained on cuda:1; this machine has no CUDA: scoring on the CPU"]
    with pytest.raises(CoraError, match="device 'cuda': CUDA is not available on this machine"):
        resolve(Placement(device="cuda"), "cpu", "fp32")  # asked for explicitly: an error, not a fallback


def test_bf16_without_matrix_units_falls_back_to_fp32_in_one_line(monkeypatch):
    said = []
    monkeypatch.setattr(placement, "cpu_has_fast", lambda dtype: dtype == torch.float32)
    assert resolve(Placement(dtype="bf16"), "cpu", "fp32", said.append).dtype == "fp32"
    assert said == ["this CPU has no native bf16 matrix units (AVX512-BF16 / AMX): scoring in fp32"]
    monkeypatch.setattr(placement, "cpu_has_fast", lambda dtype: True)
    assert resolve(Placement(dtype="bf16"), "cpu", "fp32").dtype == "bf16"
    with pytest.raises(CoraError, match="dtype 'int4'"):
        resolve(Placement(dtype="int4"), "cpu", "fp32")


def test_threads_are_set_from_the_option_or_the_machine(monkeypatch):
    assert resolve(Placement(threads=1), "cpu", "fp32").threads == 1 and torch.get_num_threads() == 1
    monkeypatch.setattr(placement, "machine_threads", lambda: 2)
    assert resolve(Placement(), "cpu", "fp32").threads == 2 and torch.get_num_threads() == 2
    with pytest.raises(CoraError, match="--threads 0: must be at least 1"):
        resolve(Placement(threads=0), "cpu", "fp32")


def _as_if_trained_on_cuda(run, tmp_path):
    moved = tmp_path / "gpu-run"
    shutil.copytree(run, moved)
    cfg = yaml.safe_load((moved / "config.yaml").read_text())
    cfg["device"] = "cuda"
    (moved / "config.yaml").write_text(yaml.safe_dump(cfg))
    return moved


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the fallback of a machine without CUDA")
def test_recommend_and_score_a_gpu_trained_run_here(run, rec, tmp_path, monkeypatch, capsys):
    gpu_run = _as_if_trained_on_cuda(run, tmp_path)
    uid = sorted(rec.catalog.train_users)[0]
    user = rec.ids.users.original(uid)
    code, out, err = main_in_process(monkeypatch, capsys, "recommend", gpu_run, "--user", user, "--k", 2,
                                     "--candidates", 5, "--json", "--threads", 1)
    assert code == 0, err
    assert "note: the run trained on cuda; this machine has no CUDA: scoring on the CPU" in err
    cpu = main_in_process(monkeypatch, capsys, "recommend", run, "--user", user, "--k", 2, "--candidates", 5,
                          "--json")[1]
    assert json.loads(out) == json.loads(cpu)  # the same model, the same machine: the same answer
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"user": [user], "item": [rec.ids.items.original(rec.recommend(uid, k=1, candidates=5)[0].item)]}
                 ).to_csv(pairs, index=False)
    code, _, err = main_in_process(monkeypatch, capsys, "score", gpu_run, "--pairs", pairs,
                                   "--out", tmp_path / "s.parquet", "--dtype", "bf16", "--threads", 1)
    assert code == 0, err
    assert pd.read_parquet(tmp_path / "s.parquet")["probability"].between(0, 1).all()


def test_bad_placement_options_are_one_line(run, rec, monkeypatch, capsys):
    user = rec.ids.users.original(sorted(rec.catalog.train_users)[0])
    for args, message in [(("--threads", 0), "--threads 0: must be at least 1"),
                          (("--dtype", "fp8"), "dtype 'fp8': choose one of"),
                          (("--device", "tpu"), "device 'tpu': choose one of")]:
        code, _, err = main_in_process(monkeypatch, capsys, "recommend", run, "--user", user, *args)
        assert code != 0 and message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err


def test_the_service_says_where_it_scores(run):
    from cora.serve.preflight import RunData

    served = RunData.open(run).recommender(placement=Placement(device="cpu", dtype="bf16", threads=1))
    with TestClient(create_app(served, max_batch=4, max_wait_ms=1)) as c:
        info = c.get("/info").json()
    assert (info["device"], info["threads"]) == ("cpu", 1)
    assert info["dtype"] in ("bf16", "fp32")  # fp32 where this CPU has no bf16 units
    assert served.method.llm.get_input_embeddings().weight.dtype == {"bf16": torch.bfloat16,
                                                                     "fp32": torch.float32}[info["dtype"]]


def test_int8_quantises_the_frozen_decoder_linears_only(run, rec, monkeypatch):
    from cora.serve.preflight import RunData

    served = RunData.open(run).recommender(placement=Placement(device="cpu", dtype="int8", threads=1))
    assert served.precision == "int8" and served.info()["dtype"] == "int8"
    wrapped = served.method.adapter.wrapped.values()
    assert all(w.weight.dtype == torch.qint8 for w in wrapped)  # the frozen product in int8 ...
    assert all(w.lowrank_B.dtype == torch.float32 for w in wrapped)  # ... CoRA's own tensors in fp32
    head = served.method.llm.get_output_embeddings()
    assert head.weight.dtype == torch.float32  # the Yes row is read directly
    uid = sorted(rec.catalog.train_users)[0]
    pairs = [(uid, i) for i in sorted(rec.catalog.titles)[:6]]
    assert np.abs(served.score_pairs(pairs) - rec.score_pairs(pairs)).max() < 0.05  # probabilities
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(CoraError, match="--dtype int8 .* runs on a CPU"):
        resolve(Placement(device="cuda", dtype="int8"), "cpu", "fp32")


def test_training_on_the_cpu_of_a_gpu_machine_by_default_is_said(monkeypatch):
    from cora.cli import cpu_beside_gpu_note

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H100")
    note = cpu_beside_gpu_note("cpu", "fp32", device_given=False)
    assert note.startswith("this machine has CUDA (NVIDIA H100) but the run trains on the CPU in fp32")
    assert cpu_beside_gpu_note("cpu", "fp32", device_given=True) is None  # asked for: nothing to say
    assert cpu_beside_gpu_note("cuda", "bf16", device_given=False) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cpu_beside_gpu_note("cpu", "fp32", device_given=False) is None


def test_bf16_mixed_keeps_fp32_weights_and_multiplies_in_bf16(run, rec, monkeypatch):
    from cora.serve.preflight import RunData

    monkeypatch.setattr(placement, "cpu_has_fast", lambda dtype: True)
    served = RunData.open(run).recommender(placement=Placement(device="cpu", dtype="bf16-mixed", threads=1))
    assert served.info()["dtype"] == "bf16-mixed"
    assert served.method.llm.get_input_embeddings().weight.dtype == torch.float32
    with served.scoring_precision():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    uid = sorted(rec.catalog.train_users)[0]
    pairs = [(uid, i) for i in sorted(rec.catalog.titles)[:6]]
    assert np.abs(served.score_pairs(pairs) - rec.score_pairs(pairs)).max() < 0.05
    said = []
    monkeypatch.setattr(placement, "cpu_has_fast", lambda dtype: dtype == torch.float32)
    assert resolve(Placement(dtype="bf16-mixed"), "cpu", "fp32", said.append).precision == "fp32"
    assert said and "scoring in fp32" in said[0]
