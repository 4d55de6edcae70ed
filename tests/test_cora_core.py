"""CoRA's core invariants on tiny random models (issue 3 acceptance a-f and resume)."""

from __future__ import annotations

import json

import copy

import pytest
import torch

from cora.llm.lowrank import parse_modules
from cora.llm.scoring import yes_logits
from cora.train.run import build_method, evaluate_run, load_run, train_run
from cora.errors import CoraError

from llm_fixtures import first_batch as _batch, tiny_config


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("cora")


def _randomise_b(method, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in method.adapter.wrapped.values():
            w.lowrank_B.copy_(torch.randn(w.lowrank_B.shape, generator=g) * 0.5)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_init_equals_frozen_backbone_exactly(root, kind):
    from llm_fixtures import tiny_backbone_folder

    cfg = tiny_config(root, backbone=str(tiny_backbone_folder(root, kind)), modules="qkvof")
    method, ds = build_method(cfg)
    method.eval()
    batch = _batch(method, ds)
    fresh, _ = build_method(cfg.__class__(**{**cfg.to_dict(), "method": "icl"}))
    fresh.eval()
    assert torch.equal(method(batch), fresh(batch))
    # The down projection has another input width: a second generator head serves it.
    assert len(method.adapter.input_widths) == 2


def test_batched_path_equals_per_sample_merged_weights(root):
    cfg = tiny_config(root, modules="qkvof")
    method, ds = build_method(cfg)
    pristine = copy.deepcopy(method.llm)  # wrappers included; rebuilt below as plain Linear weights
    method.eval()
    _randomise_b(method)
    batch = _batch(method, ds)
    with torch.no_grad():
        a = method.collaborative_weights(batch)
        batched = method(batch)
        for j in range(len(batched)):
            merged = copy.deepcopy(pristine)
            for name, w in method.adapter.wrapped.items():
                lin = torch.nn.Linear(w.in_features, w.out_features, bias=w.base.bias is not None)
                delta = w.scale * (a[w.in_features][j] @ w.lowrank_B).T  # (d_out, d_in): (A B)^T
                lin.weight.copy_(w.base.weight + delta)
                if w.base.bias is not None:
                    lin.bias.copy_(w.base.bias)
                merged.set_submodule(name, lin)
            one = yes_logits(merged, method.yes_token_id, batch["attention_mask"][j:j + 1],
                             input_ids=batch["input_ids"][j:j + 1])
            assert one.item() == pytest.approx(batched[j].item(), abs=1e-5)


def test_samples_do_not_leak_into_each_other(root):
    method, ds = build_method(tiny_config(root))
    method.eval()
    _randomise_b(method)
    batch = _batch(method, ds, n=6)
    j = 2
    with torch.no_grad():
        before = method(batch)
        method.cf.user.weight[batch["uid"][j]] += 3.0
        method.cf.item.weight[batch["iid"][j]] -= 3.0
        after = method(batch)
    others = [i for i in range(len(before)) if batch["uid"][i] != batch["uid"][j] and batch["iid"][i] != batch["iid"][j]]
    assert others, "test batch needs rows with other users and items"
    assert torch.equal(before[others], after[others])
    assert not torch.allclose(before[j], after[j])


def test_training_touches_only_generator_and_b(root):
    cfg = tiny_config(root)
    method, ds = build_method(cfg)
    frozen_llm = {k: v.clone() for k, v in method.llm.state_dict().items() if "lowrank_B" not in k}
    frozen_cf = {k: v.clone() for k, v in method.cf.state_dict().items()}
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("generator.") or n.endswith("lowrank_B") for n in trainable)
    method.train()
    batch = _batch(method, ds, n=8, split="train")
    loss = torch.nn.functional.binary_cross_entropy_with_logits(method(batch), batch["label"])
    loss.backward()
    for n, p in method.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, n
        else:
            assert p.grad is None, n
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.step()
        opt.zero_grad()
        method(batch).sum().backward()
    assert all(torch.equal(v, method.llm.state_dict()[k]) for k, v in frozen_llm.items())
    assert all(torch.equal(v, method.cf.state_dict()[k]) for k, v in frozen_cf.items())
    assert any(w.lowrank_B.abs().sum() > 0 for w in method.adapter.wrapped.values())


def test_no_weights_gives_the_untouched_backbone(root):
    method, ds = build_method(tiny_config(root))
    pristine = copy.deepcopy(method.llm)
    _randomise_b(method)  # even a trained adapter must not change plain prompts
    method.eval()
    batch = _batch(method, ds)
    with torch.no_grad():
        # Strip the wrappers from the copy: a plain Linear model with the same weights.
        for name, w in method.adapter.wrapped.items():
            pristine.set_submodule(name, copy.deepcopy(w.base))
        ours = method.llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ref = pristine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(ours, ref)


def test_save_load_and_resume(root, tmp_path, monkeypatch):
    cfg = tiny_config(root)
    full = tmp_path / "full"
    summary = train_run(cfg, full, show_progress=False)
    assert summary["steps"] == 6
    m1 = evaluate_run(full, "test", show_progress=False)
    # Save -> load gives identical scores.
    method, _, ds = load_run(full)
    again = evaluate_run(full, "test", show_progress=False)
    assert m1["auc"] == again["auc"]
    size = (full / "model.safetensors").stat().st_size
    assert size < 2_000_000  # trainable tensors only: the tiny backbone itself is not in it

    # Kill a run right after its first checkpoint (step 2), then resume it.
    from cora.train import loop

    killed = tmp_path / "killed"
    real = loop.save_loop
    calls = {"n": 0}

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_loop", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, killed, show_progress=False)
    monkeypatch.setattr(loop, "save_loop", real)
    with pytest.raises(CoraError, match="--resume"):
        train_run(cfg, killed, show_progress=False)
    # The checkpoint holds the training time so far; a resumed run adds to it (here: pretend the
    # first piece took 1000 s).
    from cora.safe_state import read_state, write_state

    state = read_state(killed / "checkpoint", "state")
    assert 0 < state["elapsed_s"] < 1000
    write_state(killed / "checkpoint", "state", {**state, "elapsed_s": 1000.0})
    resumed = train_run(cfg, killed, resume=True, show_progress=False)
    # Times are logged rounded to 0.1 s, and a fast CPU trains the step after the resume in less
    # than 0.05 s, so the first resumed record may read exactly 1000.0.
    assert 1000 <= resumed["wall_time_s"] < 1000 + 10 * summary["wall_time_s"] + 60
    times = [json.loads(line)["time_s"] for line in (killed / "log.jsonl").read_text().splitlines()]
    assert times[0] < 1000 <= times[1] and times == sorted(times)
    m2 = evaluate_run(killed, "test", show_progress=False)
    assert m2["auc"] == m1["auc"] and m2["uauc"] == m1["uauc"]
    from safetensors.torch import load_file

    a, b = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_module_letters():
    assert parse_modules("qk") == ("q_proj", "k_proj")
    assert parse_modules("qkvof")[-3:] == ("gate_proj", "up_proj", "down_proj")
    with pytest.raises(CoraError, match="letters"):
        parse_modules("qx")


def test_adapter_dropout_follows_training_mode_while_backbone_stays_in_eval(tmp_path):
    method, _ = build_method(tiny_config(tmp_path, lora_dropout=0.5))
    method.train()
    wrapped = next(iter(method.adapter.wrapped.values()))
    assert wrapped.dropout.training and not method.llm.training
    assert not any(m.training for n, m in method.llm.named_modules() if not n.endswith("dropout") and
                   not isinstance(m, type(wrapped)))
    method.eval()
    assert not wrapped.dropout.training


def test_logit_offset_is_the_mean_initial_logit_and_travels_with_the_checkpoint(tmp_path):
    from cora.train.run import load_run, train_run

    cfg = tiny_config(tmp_path, max_steps=2, eval_every=2)
    summary = train_run(cfg, tmp_path / "run", show_progress=False)
    method, _, ds = load_run(tmp_path / "run")
    assert float(method.logit_offset) == pytest.approx(summary["logit_offset"], abs=1e-4)
    assert summary["logit_offset"] != 0.0
    raw, _ = build_method(tiny_config(tmp_path, calibrate_logit=False))
    assert float(raw.logit_offset) == 0.0


def test_modules_reading_the_same_input_share_one_rank_r_projection(tmp_path):
    """q/k/v read one tensor and CoRA gives them one A: dropout(x) A is computed once, not three times."""
    method, ds = build_method(tiny_config(tmp_path, modules="qkvof"))
    method.eval()
    calls = []
    for w in method.adapter.wrapped.values():
        w.dropout.register_forward_hook(lambda *_: calls.append(1))
    method(_batch(method, ds))
    n_layers = method.llm.config.num_hidden_layers
    # Per layer: attention input (q, k, v), o input, MLP input (gate, up), down input.
    assert len(method.adapter.wrapped) == 7 * n_layers
    assert len(calls) == 4 * n_layers
    assert method.adapter._weights.last_x is None  # nothing kept alive after the pass
