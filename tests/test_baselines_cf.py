"""CoLLM and BinLLM on tiny random models: trainable sets per stage, frozen tensors, CoLLM's slot
embeddings under right padding, BinLLM's code round trip, and the two-stage run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import run_cli
from llm_fixtures import tiny_cf_run, tiny_config

from cora.data.prompts import COLLM_TEMPLATE, build_prompt
from cora.errors import CoraError
from cora.llm.slots import tokenize_with_slots
from cora.llm.tokenize import slot_positions
from cora.methods.binllm import bits_to_text, cf_embeddings, fit_binariser, text_to_bits
from cora.methods.slots import SLOT_MARKER
from cora.train.run import build_method, evaluate_run, load_run, train_run


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("baselines-cf")


def _batch(method, ds, rows=slice(0, 6), split="valid"):
    df = ds.split(split).iloc[rows]
    enc = method.encode(df, ds.domain)
    return method.collate(enc, list(range(len(enc))))


def _trainable(method) -> set[str]:
    return {n for n, p in method.named_parameters() if p.requires_grad}


def _is_lora(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def _steps(method, batch, n=2):
    """A few AdamW steps on the currently trainable tensors; every step, exactly those get grads."""
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    method.train()
    for _ in range(n):
        loss = F.binary_cross_entropy_with_logits(method(batch), batch["label"])
        loss.backward()
        for name, p in method.named_parameters():
            assert (p.grad is not None) == p.requires_grad, name
        opt.step()
        opt.zero_grad()
    method.eval()


def _snapshot(method, keep) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in method.named_parameters() if keep(n, p)}


# ----------------------------------------------------------------------------- CoLLM
def test_collm_trainable_sets_per_stage(root):
    method, _ = build_method(tiny_config(root, method="collm"))
    assert method.stages() == ("lora", "mapping")
    lora = {n for n in _trainable(method) if _is_lora(n)}
    mapping = {n for n in _trainable(method) if n.startswith("mapping.")}
    assert _trainable(method) == lora | mapping  # built as the finished method: both
    assert len(lora) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    params = dict(method.named_parameters())
    # r 8 on d_model 64: q 8x64 + 64x8, v 8x64 + 32x8 (grouped-query: 2 kv heads of 16) per layer
    assert sum(params[n].numel() for n in lora) == 2 * (512 + 512 + 512 + 256)
    # CoLLM's mapping: Linear(8, 80) - ReLU - Linear(80, 64) (10 x CF dim hidden)
    assert sum(params[n].numel() for n in mapping) == 8 * 80 + 80 + 80 * 64 + 64
    method.begin_stage("lora")
    assert _trainable(method) == lora
    method.begin_stage("mapping")
    assert _trainable(method) == mapping
    method.begin_stage(None)
    assert _trainable(method) == lora | mapping
    with pytest.raises(CoraError, match="no stage"):
        method.begin_stage("nope")


def test_collm_stages_touch_only_their_tensors(root):
    method, ds = build_method(tiny_config(root, method="collm"))
    # Stage 1: LoRA on the text prompt; the mapping, the backbone and the CF model stay put.
    method.begin_stage("lora")
    batch = _batch(method, ds, slice(0, 8), "train")
    assert "slot_offsets" not in batch  # stage 1's prompt has no CF slots
    frozen = _snapshot(method, lambda n, p: not p.requires_grad)
    lora = _snapshot(method, lambda n, p: p.requires_grad)
    _steps(method, batch)
    assert all(torch.equal(v, dict(method.named_parameters())[k]) for k, v in frozen.items())
    assert any(not torch.equal(v, dict(method.named_parameters())[k]) for k, v in lora.items())
    # Stage 2: only the mapping; LoRA (as trained in stage 1) is frozen now.
    method.begin_stage("mapping")
    batch = _batch(method, ds, slice(0, 8), "train")
    assert "slot_offsets" in batch
    frozen = _snapshot(method, lambda n, p: not p.requires_grad)
    assert any(_is_lora(n) for n in frozen)
    mapping = _snapshot(method, lambda n, p: p.requires_grad)
    _steps(method, batch)
    assert all(torch.equal(v, dict(method.named_parameters())[k]) for k, v in frozen.items())
    assert all(not torch.equal(v, dict(method.named_parameters())[k]) for k, v in mapping.items())
    # LoRA dropout only runs while LoRA trains.
    method.train()
    assert not any(layer.lora_dropout.training for layer in method._lora_layers)
    method.begin_stage("lora")
    assert all(layer.lora_dropout.training for layer in method._lora_layers)


def test_collm_slots_hold_the_mapped_cf_embeddings(root):
    method, ds = build_method(tiny_config(root, method="collm"))
    method.eval()
    df = ds.split("valid").iloc[:6]
    enc = method.encode(df, ds.domain)
    batch = method.collate(enc, list(range(len(enc))))
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1, "rows of different lengths are needed to test padding"
    with torch.no_grad():
        embeds = method.embed_with_slots(batch)
        plain = method.llm.get_input_embeddings()(batch["input_ids"])
        pos = slot_positions(batch["slot_offsets"], batch["attention_mask"])
        user = method.mapping(method.cf.user_embedding(batch).float())
        item = method.mapping(method.cf.item_embedding(batch["iid"]).float())
    for r in range(len(df)):
        u, i = pos[r].tolist()
        assert batch["attention_mask"][r, u] == 1 and u < i
        assert torch.allclose(embeds[r, u], user[r], atol=1e-6) and torch.allclose(embeds[r, i], item[r], atol=1e-6)
        others = torch.ones(embeds.shape[1], dtype=torch.bool)
        others[[u, i]] = False
        assert torch.equal(embeds[r, others], plain[r, others])
        # The slots sit where the markers were: between them lies exactly the prompt's text.
        text = build_prompt(df["his_title"].iloc[r], df["title"].iloc[r], ds.domain, template=COLLM_TEMPLATE,
                            user_slot=SLOT_MARKER, item_slot=SLOT_MARKER)
        head, middle, tail = (method.tokenizer(t.strip(), add_special_tokens=False)["input_ids"]
                              for t in text.split(SLOT_MARKER))
        ids = batch["input_ids"][r][batch["attention_mask"][r].bool()].tolist()  # right padding: BOS first
        assert ids[0] == method.bos_token_id
        assert ids[1:u] == head and ids[u + 1:i] == middle and ids[i + 1:] == tail
    # A row scored alone equals the same row inside a right-padded batch.
    with torch.no_grad():
        together = method(batch)
        for r in range(len(df)):
            alone = method(method.collate(enc, [r]))
            assert alone.item() == pytest.approx(together[r].item(), abs=1e-5)


def test_slot_tokenisation_keeps_text_around_markers():
    """Whole-prompt tokenisation with a byte-level BPE (as SmolLM2 / Qwen2): each marker becomes
    one position, and text a token shares with a marker edge (e.g. '|>.') is kept."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = f"the feature {SLOT_MARKER}. Using the item with the feature {SLOT_MARKER}? Answer:"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text] * 20 + ["|>. |>? a.b"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>")
    ids, slots = tokenize_with_slots(fast, [text], SLOT_MARKER, 2, bos_token_id=1, slot_token_id=0)
    ids, (u, i) = ids[0], [len(ids[0]) + s for s in slots[0]]
    assert ids[0] == 1 and ids[u] == 0 and ids[i] == 0 and ids.count(0) == 2
    assert fast.decode(ids[1:u]) == "the feature"
    assert fast.decode(ids[u + 1:i]) == ". Using the item with the feature"
    assert fast.decode(ids[i + 1:]) == "? Answer:"
    with pytest.raises(CoraError, match="slot marker"):
        tokenize_with_slots(fast, ["no marker here"], SLOT_MARKER, 2, 1, 0)
    with pytest.raises(CoraError, match="cut a collaborative slot"):
        tokenize_with_slots(fast, [text], SLOT_MARKER, 2, 1, 0, max_length=6)


def test_collm_two_stage_run_saves_and_loads(root, tmp_path):
    cfg = tiny_config(root, method="collm", max_steps=4)
    out = tmp_path / "collm"
    summary = train_run(cfg, out, show_progress=False)
    assert summary["steps"] == 8 and set(summary["stages"]) == {"lora", "mapping"}
    assert (out / "stage-1-lora" / "model.safetensors").exists() and (out / "stage-2-mapping" / "log.jsonl").exists()
    from safetensors.torch import load_file

    final = load_file(str(out / "model.safetensors"))
    stage1 = load_file(str(out / "stage-1-lora" / "model.safetensors"))
    stage2 = load_file(str(out / "stage-2-mapping" / "model.safetensors"))
    assert set(final) == set(stage1) | set(stage2)  # every stage's best tensors
    assert torch.equal(final["logit_offset"], stage2["logit_offset"])
    stage1.pop("logit_offset"), stage2.pop("logit_offset")  # the loop's score offset, saved by every stage
    assert all(_is_lora(k) for k in stage1) and all(k.startswith("mapping.") for k in stage2)
    assert all(torch.equal(final[k], v) for k, v in {**stage1, **stage2}.items())
    # Save -> load gives identical scores.
    m1 = evaluate_run(out, "test", show_progress=False)
    method, _, ds = load_run(out)
    batch = _batch(method, ds, slice(0, 6), "test")
    again, _, _ = load_run(out)
    with torch.no_grad():
        assert torch.equal(method(batch), again(batch))
    assert evaluate_run(out, "test", show_progress=False)["auc"] == m1["auc"]
    # Resuming a finished run redoes nothing and gives the same summary.
    assert train_run(cfg, out, resume=True, show_progress=False)["steps"] == 8


def test_collm_resume_inside_stage_two(root, tmp_path, monkeypatch):
    """Kill the run at stage 2's first checkpoint; resuming it gives the uninterrupted run's weights."""
    cfg = tiny_config(root, method="collm", max_steps=4)
    full = tmp_path / "full"
    train_run(cfg, full, show_progress=False)
    from cora.train import loop

    real, calls = loop.save_loop, {"n": 0}

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # stage 1 checkpoints at steps 2 and 4; this is stage 2's step 2
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_loop", save_then_die)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, killed, show_progress=False)
    monkeypatch.setattr(loop, "save_loop", real)
    assert (killed / "stage-1-lora" / "train_summary.json").exists()
    assert not (killed / "train_summary.json").exists()
    train_run(cfg, killed, resume=True, show_progress=False)
    from safetensors.torch import load_file

    a, b = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_collm_with_sasrec_uses_histories(root):
    method, ds = build_method(tiny_config(root, method="collm", cf=str(tiny_cf_run(root, "sasrec"))))
    method.eval()
    batch = _batch(method, ds)
    assert "his" in batch
    with torch.no_grad():
        assert torch.isfinite(method(batch)).all()


# ----------------------------------------------------------------------------- BinLLM
@pytest.mark.parametrize("dot_decimal", [False, True])
def test_binllm_codes_round_trip(dot_decimal):
    g = torch.Generator().manual_seed(0)
    for n_bits in (8, 32, 64):
        for _ in range(20):
            bits = torch.randint(0, 2, (n_bits,), generator=g).tolist()
            text = bits_to_text(bits, dot_decimal)
            assert text_to_bits(text, n_bits, dot_decimal) == bits
            if dot_decimal:
                assert len(text.split(".")) == n_bits // 8 and all(0 <= int(x) <= 255 for x in text.split("."))
            else:
                assert len(text) == n_bits and set(text) <= {"0", "1"}
    assert bits_to_text([1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1], True) == "129.255"
    assert text_to_bits("0.1", 16, True) == [0] * 15 + [1]
    with pytest.raises(CoraError):
        text_to_bits("256.0", 16, True)
    with pytest.raises(CoraError):
        text_to_bits("0120", 4, False)
    with pytest.raises(CoraError, match="multiple of 8"):
        bits_to_text([1, 0, 1], True)


def test_binariser_learns_codes_that_keep_cf_scores():
    """On an MF whose dot products decide the labels, the learnt codes' agreement ranks rows far
    better than chance; fitting is deterministic given the seed."""
    from sklearn.metrics import roc_auc_score

    from cora.cf.models import MatrixFactorization

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mf = MatrixFactorization(50, 80, dim=16, init_std=1.0).requires_grad_(False)
    rng = np.random.default_rng(0)
    uid, iid = rng.integers(1, 50, 2000), rng.integers(1, 80, 2000)
    score = (mf.user.weight[uid] * mf.item.weight[iid]).sum(-1).numpy()
    df = pd.DataFrame({"uid": uid, "iid": iid, "label": (score > 0).astype(int), "his": [[0]] * len(uid)})
    b1 = fit_binariser(mf, df, 32, seed=1)
    b2 = fit_binariser(mf, df, 32, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(b1.state_dict().values(), b2.state_dict().values()))
    u, i = b1.codes(*cf_embeddings(mf, df))
    assert u.shape == (len(df), 32) and u.dtype == torch.uint8 and set(u.unique().tolist()) <= {0, 1}
    agree = ((2 * u.float() - 1) * (2 * i.float() - 1)).sum(-1)
    assert roc_auc_score(df["label"], agree.numpy()) > 0.85


@pytest.mark.parametrize("dot_decimal", [False, True])
def test_binllm_prompt_holds_the_codes(root, dot_decimal):
    method, ds = build_method(tiny_config(root, method="binllm", binllm_bits=16, binllm_dot_decimal=dot_decimal))
    df = ds.split("valid").iloc[:5]
    texts = method.prompt_texts(df, ds.domain)
    users, items = method.code_texts(df)
    u_bits, i_bits = method.binariser.codes(*cf_embeddings(method.cf, df))
    for r, text in enumerate(texts):
        assert f"encoded in the feature {users[r]}. Using" in text and f"with the feature {items[r]}?" in text
        assert text_to_bits(users[r], 16, dot_decimal) == u_bits[r].tolist()
        assert text_to_bits(items[r], 16, dot_decimal) == i_bits[r].tolist()
    with pytest.raises(CoraError, match="multiple of 8"):
        build_method(tiny_config(root, method="binllm", binllm_bits=12, binllm_dot_decimal=True))


def test_binllm_trains_only_lora(root):
    method, ds = build_method(tiny_config(root, method="binllm"))
    assert method.stages() == ("text", "codes")
    trainable = _trainable(method)
    assert trainable and all(_is_lora(n) for n in trainable) and len(trainable) == 8
    for stage in ("text", "codes", None):
        method.begin_stage(stage)
        assert _trainable(method) == trainable
    batch = _batch(method, ds, slice(0, 8), "train")
    frozen = _snapshot(method, lambda n, p: not p.requires_grad)
    assert any(n.startswith("binariser.") for n in frozen) and any(n.startswith("cf.") for n in frozen)
    _steps(method, batch)
    assert all(torch.equal(v, dict(method.named_parameters())[k]) for k, v in frozen.items())
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in method.named_parameters() if ".lora_B." in n)


def test_binllm_run_saves_binariser_and_loads(root, tmp_path):
    cfg = tiny_config(root, method="binllm", max_steps=2, binllm_dot_decimal=True)
    out = tmp_path / "binllm"
    summary = train_run(cfg, out, show_progress=False)
    assert summary["steps"] == 4 and list(summary["stages"]) == ["text", "codes"]
    from safetensors.torch import load_file

    state = load_file(str(out / "model.safetensors"))
    state.pop("logit_offset")
    assert any(k.startswith("binariser.") for k in state)
    assert all(_is_lora(k) or k.startswith("binariser.") for k in state)
    method, _, ds = load_run(out)
    assert method.binariser_ready  # loaded, not refitted
    df = ds.split("test").iloc[:6]
    enc = method.encode(df, ds.domain)
    again, _, _ = load_run(out)
    enc2 = again.encode(df, ds.domain)
    assert enc.input_ids == enc2.input_ids
    with torch.no_grad():
        batch = method.collate(enc, list(range(len(enc))))
        assert torch.equal(method(batch), again(batch))


def test_binllm_single_stage(root, tmp_path):
    cfg = tiny_config(root, method="binllm", max_steps=2, binllm_text_stage=False)
    out = tmp_path / "binllm1"
    summary = train_run(cfg, out, show_progress=False)
    assert summary["steps"] == 2 and not any(p.name.startswith("stage-") for p in out.iterdir())
    method, _, _ = load_run(out)
    assert method.binariser_ready


# ----------------------------------------------------------------------------- stage reuse
@pytest.mark.parametrize("method_name,stage", [("collm", "lora"), ("binllm", "text")])
def test_first_stage_is_tallrec_and_can_be_taken_from_a_tallrec_run(root, tmp_path, method_name, stage):
    """CoLLM's / BinLLM's first stage IS TALLRec (same LoRA init, prompt, data order): trained in
    place it gives TALLRec's tensors bitwise, so taking it from a TALLRec run changes nothing."""
    from safetensors.torch import load_file

    tallrec = tmp_path / "tallrec"
    train_run(tiny_config(root, method="tallrec", max_steps=4), tallrec, show_progress=False)
    cfg = tiny_config(root, method=method_name, max_steps=4)
    trained, reused = tmp_path / "trained", tmp_path / "reused"
    train_run(cfg, trained, show_progress=False)
    summary = train_run(cfg, reused, show_progress=False, stage_from={stage: tallrec})
    first = f"stage-1-{stage}"
    donor = load_file(str(tallrec / "model.safetensors"))
    for run in (trained, reused):
        got = load_file(str(run / first / "model.safetensors"))
        assert got.keys() == donor.keys() and all(torch.equal(got[k], donor[k]) for k in donor)
    assert summary["stages"][stage]["reused_from"] == str(tallrec)
    assert not (reused / first / "log.jsonl").exists()  # not trained again
    a, b = load_file(str(trained / "model.safetensors")), load_file(str(reused / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stage_reuse_refuses_other_settings_and_unknown_stages(root, tmp_path):
    tallrec = tmp_path / "tallrec"
    train_run(tiny_config(root, method="tallrec", max_steps=2), tallrec, show_progress=False)
    with pytest.raises(CoraError, match=r"trained with other settings for lr, max_steps"):
        train_run(tiny_config(root, method="collm", max_steps=4, lr=5e-3), tmp_path / "c1", show_progress=False,
                  stage_from={"lora": tallrec})
    with pytest.raises(CoraError, match="no finished run to take stage 'lora'"):
        train_run(tiny_config(root, method="collm", max_steps=2), tmp_path / "c2", show_progress=False,
                  stage_from={"lora": tmp_path / "nowhere"})
    with pytest.raises(CoraError, match=r"no stage mapping.*\(stages: text, codes\)"):
        train_run(tiny_config(root, method="binllm", max_steps=2), tmp_path / "c3", show_progress=False,
                  stage_from={"mapping": tallrec})
    with pytest.raises(CoraError, match="it trains in one stage"):
        train_run(tiny_config(root, method="cora", max_steps=2), tmp_path / "c4", show_progress=False,
                  stage_from={"lora": tallrec})
    assert not (tmp_path / "c3").exists() and not (tmp_path / "c4").exists()
    # A CoRA run holds no LoRA: its tensors are not what CoLLM's stage 1 trains.
    cora = tmp_path / "cora"
    train_run(tiny_config(root, method="cora", max_steps=2), cora, show_progress=False)
    with pytest.raises(CoraError, match="its tensors are not what stage 'lora' trains"):
        train_run(tiny_config(root, method="collm", max_steps=2), tmp_path / "c5", show_progress=False,
                  stage_from={"lora": cora})


def test_cli_stage_from_needs_stage_equals_run(root, tmp_path):
    res = run_cli("train", "--data", root, "--method", "collm", "--out", tmp_path / "x", "--stage-from", "runs/tallrec")
    assert res.returncode == 1 and "--stage-from runs/tallrec: write STAGE=RUN" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
