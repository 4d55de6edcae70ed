"""Paper-scale safety on a tiny Llama: loading in the compute dtype, right padding in every
precision, the three named precision modes, gradient checkpointing that keeps CoRA's per-pair
weights, and a resume that changes lr / precision only when asked (issue: paper scale, part 1)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from llm_fixtures import first_batch, tiny_backbone_folder, tiny_config

from cora.config import LLMConfig
from cora.errors import CoraError
from cora.llm.backbone import load_backbone
from cora.llm.tokenize import left_pad
from cora.train.loop import predict
from cora.train.precision import autocast_for
from cora.train.run import build_method, train_run
from cora.train.schedule import warmup_cosine

# What each dtype may change in a Yes logit of the tiny model (|logit| ~ 1): fp32 only summation
# order; bf16 / fp16 their own rounding of activations between batch shapes.
TOLERANCE = {"fp32": 1e-5, "bf16": 0.05, "fp16": 0.01}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("precision")


def test_bf16_load_keeps_rotary_inv_freq_in_fp32(root):
    back = load_backbone(str(tiny_backbone_folder(root)), dtype="bf16")
    params = {p.dtype for p in back.model.parameters()}
    inv_freq = [b for n, b in back.model.named_buffers() if n.endswith("inv_freq")]
    assert params == {torch.bfloat16}
    assert inv_freq and all(b.dtype == torch.float32 for b in inv_freq)
    assert back.attention == "sdpa" and back.tokenizer.padding_side == "right"
    eager = load_backbone(str(tiny_backbone_folder(root)), attention="eager")
    assert eager.attention == "eager"
    with pytest.raises(CoraError, match="attention 'flash': choose one of sdpa, eager"):
        load_backbone(str(tiny_backbone_folder(root)), attention="flash")


def _live_cora(root, dtype: str, **overrides):
    """A CoRA method whose B matrices are non-zero, so the per-pair path changes the scores."""
    method, ds = build_method(tiny_config(root, dtype=dtype, **overrides))
    with torch.no_grad():
        for name, p in method.named_parameters():
            if name.endswith("lowrank_B"):
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    method.eval()
    return method, ds


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_rows_of_several_fold_lengths_score_as_alone(root, dtype):
    method, ds = _live_cora(root, dtype)
    enc = method.encode(ds.split("valid").iloc[:6], ds.domain)
    # Lengths 4, 12 and the full prompt (~40): a batch padded several-fold.
    enc.input_ids = [ids[:n] for ids, n in zip(enc.input_ids, [4, 12, 10_000, 4, 12, 10_000])]
    lengths = enc.lengths
    assert lengths.max() >= 3 * lengths.min()
    with torch.no_grad(), autocast_for(dtype, "cpu"):
        together = method(method.collate(enc, list(range(len(enc))))).float()
        alone = torch.cat([method(method.collate(enc, [r])).float() for r in range(len(enc))])
    assert torch.isfinite(together).all()
    torch.testing.assert_close(together, alone, atol=TOLERANCE[dtype], rtol=0)


def test_right_padding_scores_equal_the_left_padded_path_in_fp32(root):
    """The committed tables were scored with left padding and positions counted from each row's
    first real token: in fp32 the new padding changes a score by rounding only."""
    method, ds = _live_cora(root, "fp32")
    batch = first_batch(method, ds, n=8)
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1
    with torch.no_grad():
        right = method(batch)
        ids, mask = left_pad([row[m.bool()].tolist() for row, m in zip(batch["input_ids"], batch["attention_mask"])],
                             method.pad_token_id)
        with method.adapter.weights(method.collaborative_weights(batch)):
            hidden = method.llm.get_decoder()(input_ids=ids, attention_mask=mask,
                                              position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).last_hidden_state[:, -1]
        left = hidden @ method.llm.get_output_embeddings().weight[method.yes_token_id] - method.logit_offset
    assert (right - left).abs().max() < 1e-5


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_each_precision_mode_trains_two_steps(root, dtype, tmp_path):
    cfg = tiny_config(root, dtype=dtype, max_steps=2, eval_every=2, lr=1e-2)
    summary = train_run(cfg, tmp_path / "run", show_progress=False)
    assert summary["steps"] == 2 and summary["skipped_steps"] == 0
    record = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(record["loss"]) and record["grad_norm"] > 0
    # fp16 is the reference's recipe: a loss scale, recorded; the others have none.
    assert ("loss_scale" in record) == (dtype == "fp16")
    method, _ = build_method(cfg)
    assert {p.dtype for p in method.parameters() if p.requires_grad} == {torch.float32}


def _loss_and_grads(method, batch):
    method.train()
    method.zero_grad(set_to_none=True)
    loss = F.binary_cross_entropy_with_logits(method(batch).float(), batch["label"])
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in method.named_parameters() if p.requires_grad}


def _saved_bytes(method, batch) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one training forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    method.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        method(batch)
    return total


@pytest.mark.parametrize("method_name", ["cora", "tallrec"])
def test_gradient_checkpointing_same_loss_and_gradients_less_memory(root, method_name):
    results = {}
    for on in (False, True):
        torch.manual_seed(0)
        method, ds = _live_cora(root, "fp32", gradient_checkpointing=on, lora_dropout=0.0) if method_name == "cora" \
            else build_method(tiny_config(root, method=method_name, gradient_checkpointing=on, lora_dropout=0.0))
        batch = first_batch(method, ds, n=6, split="train")
        results[on] = (*_loss_and_grads(method, batch), _saved_bytes(method, batch))
    (loss_off, grads_off, bytes_off), (loss_on, grads_on, bytes_on) = results[False], results[True]
    assert loss_on == pytest.approx(loss_off, abs=1e-6)
    assert grads_on.keys() == grads_off.keys() and grads_on
    for name in grads_off:
        torch.testing.assert_close(grads_on[name], grads_off[name], atol=1e-6, rtol=1e-5)
    assert any(g.abs().sum() > 0 for n, g in grads_on.items() if "generator" in n or "lora" in n)
    assert bytes_on < 0.5 * bytes_off, (bytes_on, bytes_off)


def test_gradient_checkpointing_with_dropout_draws_the_same_masks(root):
    """Recomputing a layer replays its dropout masks (the RNG state is restored), so a training
    step with dropout on is the same with and without checkpointing."""
    grads = {}
    for on in (False, True):
        method, ds = _live_cora(root, "fp32", gradient_checkpointing=on, lora_dropout=0.3)
        batch = first_batch(method, ds, n=6, split="train")
        torch.manual_seed(5)
        grads[on] = _loss_and_grads(method, batch)[1]
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], atol=1e-6, rtol=1e-5)


def test_scores_do_not_depend_on_checkpointing_or_mode(root):
    method, ds = _live_cora(root, "fp32", gradient_checkpointing=True)
    enc = method.encode(ds.split("valid").iloc[:8], ds.domain)
    a = predict(method, enc, 4)
    method.train()  # switches the checkpointing flags on; scoring runs without gradients
    b = predict(method, enc, 4)
    np.testing.assert_array_equal(a, b)


def test_resume_may_change_lr_or_dtype_only_when_asked(root, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(root, max_steps=2, eval_every=2)
    train_run(cfg, out, show_progress=False, keep_checkpoint=True)
    (out / "train_summary.json").unlink()  # as if stopped after its checkpoint
    changed = LLMConfig(**{**cfg.to_dict(), "lr": 5e-3, "dtype": "bf16", "max_steps": 4})
    with pytest.raises(CoraError, match=r"other settings for dtype, lr; .*--allow-changed dtype,lr"):
        train_run(changed, out, resume=True, show_progress=False)
    summary = train_run(changed, out, resume=True, show_progress=False, allow_changed={"lr", "dtype"})
    assert summary["steps"] == 4
    record = json.loads((out / "resume_changes.json").read_text())
    assert record[0]["changed"] == {"dtype": ["fp32", "bf16"], "lr": [1e-2, 5e-3]} and record[0]["step"] == 2
    # From step 2 on, the schedule is the new lr's (as if the run had started with it).
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=changed.lr)
    sched = warmup_cosine(opt, changed.lr, changed.warmup_start_lr, changed.warmup_steps, changed.min_lr,
                          changed.lr_horizon or changed.max_steps)
    for _ in range(4):
        opt.step()
        sched.step()
    last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 4 and last["lr"] == pytest.approx(sched.get_last_lr()[0], rel=1e-9)
    with pytest.raises(CoraError, match="--allow-changed: only lr, dtype, attention may change on resume"):
        train_run(changed, out, resume=True, show_progress=False, allow_changed={"rank"})


def test_training_frees_its_backbone_and_records_each_phase_peak(root, tmp_path, monkeypatch):
    """An experiment row trains, then scores: the trained copy of the backbone must be gone when
    the scoring loads it again, and each phase's peak memory is recorded."""
    import weakref

    import cora.train.run as run_module
    from cora.experiment.execute import release_memory

    loaded = []
    real = run_module.load_backbone

    def watched(*args, **kwargs):
        back = real(*args, **kwargs)
        loaded.append(weakref.ref(back.model))
        return back

    monkeypatch.setattr(run_module, "load_backbone", watched)
    summary = train_run(tiny_config(root, max_steps=2, eval_every=2), tmp_path / "run", show_progress=False)
    release_memory()
    assert len(loaded) == 1 and loaded[0]() is None, "the trained model is still referenced after train_run"
    assert set(summary["memory"]) == {"load", "train"} and all(v["peak_rss_mb"] > 0 for v in summary["memory"].values())
    metrics = run_module.evaluate_run(tmp_path / "run", "valid", show_progress=False)
    assert set(metrics["eval"]["memory"]) == {"load", "score"}


def test_experiment_backbone_and_dtype_overrides(tmp_path):
    """`cora experiment FILE --backbone PATH --dtype ...`: the file's llm values are replaced, a row
    that names its own dtype keeps it, a bad value is one line naming the field."""
    from pathlib import Path

    from cora.experiment.spec import Experiment

    root = Path(__file__).resolve().parents[1]
    exp = Experiment.load(root / "experiments" / "ml1m-precision.yaml")
    exp.place(backbone=str(tmp_path / "my-llama"), dtype="bf16")
    configs = {t.name: t.config for t in exp.plan.trainings if t.config.__class__ is LLMConfig}
    assert {c.backbone for c in configs.values()} == {str(tmp_path / "my-llama")}
    assert {n: c.dtype for n, c in configs.items()} == {"CoRA-MF fp32": "fp32", "CoRA-MF bf16": "bf16",
                                                        "CoRA-MF fp16": "fp16"}
    gpu = Experiment.load(root / "experiments" / "ml1m-table3-gpu.yaml")
    gpu.place(device="cpu", backbone="/models/vicuna-7b", dtype="fp32")
    assert {t.config.dtype for t in gpu.plan.trainings if isinstance(t.config, LLMConfig)} == {"fp32"}
    with pytest.raises(CoraError, match="field 'dtype' = 'fp8': must be one of fp32, bf16, fp16"):
        gpu.place(dtype="fp8")


@pytest.mark.parametrize("device, cuda, distributed, expected", [
    ("cpu", True, False, (False, None)), ("auto", False, False, (False, None)), ("auto", True, False, (True, None)),
    ("cuda", True, False, (True, None)), ("cuda:1", True, False, (True, 1)),
    ("cuda:1", True, True, (True, None)),  # under accelerate launch each process takes its local rank's GPU
])
def test_accelerator_placement_honours_cuda_n(device, cuda, distributed, expected):
    from cora.train.loop import accelerator_placement

    assert accelerator_placement(device, cuda, distributed) == expected


def test_evaluate_creates_the_accelerator_before_loading_the_model(root, tmp_path, monkeypatch):
    """Under `accelerate launch` the accelerator gives each process its GPU; a backbone loaded
    before it would put every replica on cuda:0."""
    import cora.train.run as run_module

    train_run(tiny_config(root, max_steps=2, eval_every=2), tmp_path / "run", show_progress=False)
    calls = []
    real_acc, real_load = run_module.make_accelerator, run_module.load_backbone
    monkeypatch.setattr(run_module, "make_accelerator", lambda cfg: calls.append("accelerator") or real_acc(cfg))
    monkeypatch.setattr(run_module, "load_backbone", lambda *a, **k: calls.append("backbone") or real_load(*a, **k))
    run_module.evaluate_run(tmp_path / "run", "valid", show_progress=False)
    assert calls[:2] == ["accelerator", "backbone"]


def test_resume_with_another_number_of_processes_is_refused(root, tmp_path):
    from cora.train.checkpoint import load_loop

    out = tmp_path / "run"
    train_run(tiny_config(root, max_steps=2, eval_every=2), out, show_progress=False, keep_checkpoint=True)
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    sched = warmup_cosine(opt, 1e-3, 0.0, 1, 0.0, 10)
    with pytest.raises(CoraError, match=r"trained by 1 process\(es\), resumed by 2: .*resume it with 1"):
        load_loop(out / "checkpoint", sched, world_size=2)


def test_evaluate_scores_in_another_dtype_and_says_so(root, tmp_path):
    """`cora evaluate --dtype / --device`: a run trained in fp32 scored in bf16 on the CPU; where and
    how it scored is in metrics.json, and the scores stay within bf16's rounding of fp32's."""
    import pandas as pd

    from cora.train.run import evaluate_run

    train_run(tiny_config(root, max_steps=2, eval_every=2), tmp_path / "run", show_progress=False)
    fp32 = evaluate_run(tmp_path / "run", "valid", show_progress=False)
    scores32 = pd.read_parquet(tmp_path / "run" / "predictions-valid.parquet")["score"].to_numpy()
    bf16 = evaluate_run(tmp_path / "run", "valid", show_progress=False, device="cpu", dtype="bf16")
    scores16 = pd.read_parquet(tmp_path / "run" / "predictions-valid.parquet")["score"].to_numpy()
    assert (fp32["eval"]["dtype"], bf16["eval"]["dtype"], bf16["eval"]["device"]) == ("fp32", "bf16", "cpu")
    assert np.abs(scores16 - scores32).max() < 0.05 and not np.array_equal(scores16, scores32)
