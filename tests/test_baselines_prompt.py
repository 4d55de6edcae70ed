"""Prompt4NR, TALLRec and PersonPrompt on tiny random models: what trains, what stays frozen,
where the inserted vectors land, and that a saved run scores exactly like the trained method."""

from __future__ import annotations

import pytest
import torch
from llm_fixtures import first_batch as _batch
from llm_fixtures import tiny_config
from safetensors.torch import load_file
from tiny_models import tiny_backbone

import cora.train.run as run_module
from cora.errors import CoraError
from cora.llm.backbone import load_backbone
from cora.llm.tokenize import slot_positions
from cora.train.loop import predict
from cora.train.run import build_method, load_run, train_run

METHODS = ("prompt4nr", "tallrec", "personprompt")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("baselines")


def _trainable(method) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in method.named_parameters() if p.requires_grad}


def _lora_shapes(method, targets=("q_proj", "v_proj"), r=8) -> dict[str, tuple[int, ...]]:
    """The LoRA tensors the peft adapters on ``targets`` must have, from the model's own linears."""
    out = {}
    for name, module in method.llm.named_modules():
        if name.rsplit(".", 1)[-1] in targets and hasattr(module, "base_layer"):
            base = module.base_layer
            out[f"llm.{name}.lora_A.default.weight"] = (r, base.in_features)
            out[f"llm.{name}.lora_B.default.weight"] = (base.out_features, r)
    return out


def _frozen_state(model) -> dict[str, torch.Tensor]:
    """The backbone's own tensors, under their plain names (peft moves a wrapped weight to
    ``...base_layer.weight``)."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in model.state_dict().items()
            if ".lora_" not in k}


# ------------------------------------------------------------------ trainable sets
def test_trainable_sets(root):
    d = 64  # tiny backbones: hidden 64, 2 layers, 4 query / 2 key-value heads of 16
    method, ds = build_method(tiny_config(root, method="prompt4nr"))
    assert _trainable(method) == {"soft_prompt": (10, d)}

    method, ds = build_method(tiny_config(root, method="personprompt"))
    assert _trainable(method) == {"user_tokens": (ds.n_users, d), "item_tokens": (ds.n_items, d)}
    assert (ds.n_users, ds.n_items) == (13, 31)  # ids 1..12 and 1..30, row 0 = padding

    method, _ = build_method(tiny_config(root, method="tallrec"))
    lora = _lora_shapes(method)
    assert _trainable(method) == lora and len(lora) == 8  # q and v of 2 layers, A and B each
    assert sum(torch.Size(s).numel() for s in lora.values()) == 2 * (8 * 64 + 64 * 8 + 8 * 64 + 32 * 8)
    assert all(p.dtype == torch.float32 for p in method.parameters() if p.requires_grad)

    # --prompt-lora: the vectors and the same standard LoRA train together.
    method, ds = build_method(tiny_config(root, method="personprompt", prompt_lora=True, lora_targets="qkvo", lora_rank=4))
    expected = {"user_tokens": (ds.n_users, d), "item_tokens": (ds.n_items, d),
                **_lora_shapes(method, ("q_proj", "k_proj", "v_proj", "o_proj"), r=4)}
    assert _trainable(method) == expected and len(expected) == 2 + 16


def test_bad_settings_are_one_line_errors(root):
    with pytest.raises(CoraError, match="soft_tokens. = 0: must be an integer >= 1"):
        build_method(tiny_config(root, method="prompt4nr", soft_tokens=0))
    with pytest.raises(CoraError, match="lora_targets. = .qx.: must be letters"):
        build_method(tiny_config(root, method="tallrec", lora_targets="qx"))
    method, ds = build_method(tiny_config(root, method="personprompt"))
    df = ds.split("test").iloc[:3].copy()
    df.loc[df.index[0], "uid"] = ds.n_users  # one past the table
    with pytest.raises(CoraError, match="user ids"):
        method.encode(df, ds.domain)


def test_lora_trainable_in_fp32_on_a_bf16_backbone(root):
    method, ds = build_method(tiny_config(root, method="tallrec"), backbone=tiny_backbone("llama", dtype="bf16"))
    lora = [p for p in method.parameters() if p.requires_grad]
    assert lora and all(p.dtype == torch.float32 for p in lora)
    with torch.no_grad():
        scores = method.eval()(_batch(method, ds))
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()


# ------------------------------------------------------------------ TALLRec specifics
def test_tallrec_at_init_is_icl_exactly(root):
    cfg = tiny_config(root, method="tallrec")
    tallrec, ds = build_method(cfg)
    icl, _ = build_method(tiny_config(root, method="icl"))
    tallrec.eval()
    icl.eval()
    batch = _batch(tallrec, ds)
    with torch.no_grad():
        assert torch.equal(tallrec(batch), icl(batch))
        for layer in tallrec._lora_layers:  # a non-zero B must change the scores: the adapters are live
            torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.5)
        assert not torch.allclose(tallrec(batch), icl(batch))


def test_lora_dropout_follows_the_method_mode(root):
    method, _ = build_method(tiny_config(root, method="tallrec"))
    method.train()
    assert all(layer.lora_dropout["default"].training for layer in method._lora_layers)
    assert not any(layer.base_layer.training for layer in method._lora_layers)  # frozen parts stay in eval
    assert not method.llm.training
    method.eval()
    assert not any(layer.lora_dropout["default"].training for layer in method._lora_layers)


# ------------------------------------------------------------------ slots: where the vectors land
def _padded_batch(method, ds, n=8):
    batch = _batch(method, ds, n=n)
    assert (batch["attention_mask"] == 0).any(), "the test batch needs rows of different lengths"
    return batch


def _alone_vs_batched(method, batch):
    with torch.no_grad():
        together = method(batch)
        for j in range(len(together)):
            keep = batch["attention_mask"][j].bool()
            one = {k: v[j:j + 1] for k, v in batch.items()}
            one["input_ids"], one["attention_mask"] = one["input_ids"][:, keep], one["attention_mask"][:, keep]
            assert method(one).item() == pytest.approx(together[j].item(), abs=1e-5)


def test_personprompt_tokens_sit_at_the_id_slots(root):
    method, ds = build_method(tiny_config(root, method="personprompt"))
    method.eval()
    batch = _padded_batch(method, ds)
    tok = method.tokenizer
    words = tok.convert_tokens_to_ids(['"', "with", "the", "feature"])
    feature, period, question = (tok.convert_tokens_to_ids(w) for w in ("feature", ".", "?"))
    with torch.no_grad():
        embeds = method.embed_with_slots(batch)
        plain = method.llm.get_input_embeddings()(batch["input_ids"])
    width = batch["input_ids"].shape[1]
    positions = slot_positions(batch["slot_offsets"], batch["attention_mask"])
    for j in range(len(embeds)):
        user_pos, item_pos = positions[j].tolist()
        ids = batch["input_ids"][j]
        assert ids[user_pos - 1] == feature and ids[user_pos + 1] == period  # "... the feature <UserID>."
        assert ids[item_pos - 4:item_pos].tolist() == words  # '... titled "Title" with the feature <TargetItemID>?'
        assert ids[item_pos + 1] == question
        assert torch.equal(embeds[j, user_pos], method.user_tokens[batch["uid"][j]])
        assert torch.equal(embeds[j, item_pos], method.item_tokens[batch["iid"][j]])
        others = torch.ones(width, dtype=torch.bool)
        others[[user_pos, item_pos]] = False
        assert torch.equal(embeds[j, others], plain[j, others])  # nothing else is touched
    _alone_vs_batched(method, batch)


def test_prompt4nr_soft_tokens_follow_each_rows_bos(root):
    method, ds = build_method(tiny_config(root, method="prompt4nr", soft_tokens=3))
    method.eval()
    table = method.llm.get_input_embeddings().weight
    # Initialised from real vocabulary rows (not specials).
    special = set(method.tokenizer.all_special_ids)
    for row in method.soft_prompt:
        hits = [i for i in range(table.shape[0]) if torch.equal(table[i].float(), row)]
        assert hits and not special & set(hits)
    with torch.no_grad():
        method.soft_prompt.add_(torch.randn_like(method.soft_prompt))  # distinct from any word
    batch = _padded_batch(method, ds)
    with torch.no_grad():
        embeds = method.embed_with_slots(batch)
    icl, _ = build_method(tiny_config(root, method="icl"))
    plain = _batch(icl, ds, n=8)
    for j in range(len(embeds)):
        real = batch["input_ids"][j][batch["attention_mask"][j].bool()]  # right padding: BOS first
        assert real[0] == method.bos_token_id
        assert torch.equal(embeds[j, 1:4], method.soft_prompt.detach())
        # after the soft prompt comes exactly the plain prompt every method shares
        text = plain["input_ids"][j][plain["attention_mask"][j].bool()][1:]
        assert torch.equal(real[4:], text)
    _alone_vs_batched(method, batch)


# ------------------------------------------------------------------ a short training run
@pytest.fixture(scope="module", params=METHODS)
def trained(request, root, tmp_path_factory):
    """One 4-step run per method (one validation, at step 4, so the saved best IS the final
    state), with the trained method object captured from the loop."""
    name = request.param
    cfg = tiny_config(root, method=name, max_steps=4, eval_every=4, warmup_steps=1, lr=5e-2)
    out = tmp_path_factory.mktemp(name) / "run"
    captured = {}
    real_fit = run_module.fit

    def spy(method, *args, **kwargs):
        captured["method"] = method
        return real_fit(method, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "fit", spy)
        summary = train_run(cfg, out, show_progress=False)
    assert summary["steps"] == 4
    return cfg, out, captured["method"]


def test_training_changes_only_the_trainable_tensors(trained):
    cfg, out, method = trained
    fresh = load_backbone(cfg.backbone)
    before = _frozen_state(fresh.model)
    after = _frozen_state(method.llm)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the backbone is bitwise untouched
    initial, _ = build_method(cfg)  # same seed: the untrained starting point
    start = initial.trainable_state_dict()
    saved = load_file(str(out / "model.safetensors"))
    assert set(saved) == set(start) == set(method.trainable_state_dict())  # checkpoint = trainable tensors only
    changed = [k for k in saved if not torch.equal(saved[k], start[k])]
    assert changed
    if cfg.method == "tallrec":
        assert any(k.endswith("lora_B.default.weight") for k in changed)  # B left zero: LoRA is live


def test_saved_run_scores_like_the_trained_method(trained):
    cfg, out, method = trained
    loaded, _, ds = load_run(out)
    df = ds.split("test").iloc[:48]
    a = predict(method, method.encode(df, ds.domain), 16)
    b = predict(loaded, loaded.encode(df, ds.domain), 16)
    assert (a == b).all()
