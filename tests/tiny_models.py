"""Tiny random backbones for tests: an in-memory word-level tokenizer and 2-layer Llama / Qwen2.

Everything is built locally (no network, no hub cache), in well under a second, and is shaped
like a real backbone: named q/k/v/o and MLP projections, grouped-query attention, left padding.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from cora.llm.backbone import Backbone, make_backbone

SPECIAL = ["<pad>", "<s>", "</s>", "[UNK]"]
# The words of the ML-1M / Amazon-Book prompts (DESIGN sec. 4) in both cases, plus title-ish
# words; anything else becomes [UNK], which is enough for tests that only need valid ids.
_WORDS = """
question a user has given high ratings to the following movies movie books book leverage
information predict whether would enjoy titled answer with or yes no and of in on for is it
this that at by from an as be are was his her their none nothing empty unknown title titles
story love war man woman day night life world star city american king lost last first new
capital france paris
""".split()
_PUNCT = list("#:?.,()\\\"'!-&/;")
_LETTERS = list(string.ascii_letters)  # includes "n", the tail of the prompt's literal backslash-n


def _vocab() -> dict[str, int]:
    words = SPECIAL + _PUNCT + _LETTERS + [str(d) for d in range(10)]
    for w in _WORDS:
        words += [w, w.capitalize(), w.upper()]
    words += ["Yes", "No"]  # already present via capitalize(); listed so the intent is explicit
    vocab: dict[str, int] = {}
    for w in words:
        vocab.setdefault(w, len(vocab))
    return vocab


def make_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """WordLevel tokenizer over prompt words; splits on whitespace, punctuation and digits.

    Like SmolLM2's it adds no BOS by itself (the prompt code prepends ``bos_token_id``).
    """
    tok = Tokenizer(models.WordLevel(vocab=_vocab(), unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Punctuation(),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="[UNK]",
        padding_side="left")


def _config_kwargs(vocab_size: int) -> dict:
    ids = _vocab()
    return dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=96, max_position_embeddings=512,
                tie_word_embeddings=False, pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"],
                eos_token_id=ids["</s>"])


def _seeded(cls, config, seed: int):
    # fork_rng: building a test model must not shift the global RNG other code relies on.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model.eval()


def make_tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    return _seeded(LlamaForCausalLM, LlamaConfig(**_config_kwargs(vocab_size)), seed)


def make_tiny_qwen2(vocab_size: int, seed: int = 0) -> Qwen2ForCausalLM:
    """Qwen2 differs from Llama where adapters care: q/k/v projections carry a bias."""
    return _seeded(Qwen2ForCausalLM, Qwen2Config(**_config_kwargs(vocab_size)), seed)


_MAKERS = {"llama": make_tiny_llama, "qwen2": make_tiny_qwen2}


def tiny_model_and_tokenizer(kind: str = "llama", seed: int = 0):
    tokenizer = make_tokenizer()
    return _MAKERS[kind](len(tokenizer), seed=seed), tokenizer


def tiny_backbone(kind: str = "llama", dtype: str = "fp32", seed: int = 0) -> Backbone:
    """A frozen, eval-mode tiny backbone on CPU, set up exactly as load_backbone sets up real ones."""
    model, tokenizer = tiny_model_and_tokenizer(kind, seed)
    return make_backbone(model, tokenizer, f"tiny-{kind}", dtype=dtype, device="cpu")


def save_tiny(folder: str | Path, kind: str = "llama", seed: int = 0):
    """Write a tiny model + tokenizer as a Hugging Face folder; returns (folder, model, tokenizer)
    so a test can compare what load_backbone(folder) reads back with what was saved.

    Note: transformers 5 loads any folder whose model_type is qwen2 with its Qwen2Tokenizer,
    so a saved "qwen2" folder reads back with a different (BPE) tokenisation; use "llama" where
    the tokenizer must round-trip exactly."""
    folder = Path(folder)
    model, tokenizer = tiny_model_and_tokenizer(kind, seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer
