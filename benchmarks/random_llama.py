"""A randomly initialised Llama-shaped model folder, for speed and memory measurements of
backbones whose weights are not at hand (timings do not depend on the weights' values).

    python benchmarks/random_llama.py OUT --size 1b --tokenizer-from FOLDER [--dtype bf16]

``--size``: 1b (TinyLlama-1.1B's shape: d 2048, 22 layers, 32 heads, 4 KV heads, FFN 5632) or
7b (Vicuna-7B's: d 4096, 32 layers, 32 heads, FFN 11008). The tokenizer is copied from FOLDER (a
Hugging Face folder, e.g. the one cora converts SmolLM2's GGUF into); the vocabulary is its size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

SHAPES = {
    "1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
               intermediate_size=5632),
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
               intermediate_size=11008),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--tokenizer-from", type=Path, required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.tokenizer_from)
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      max_position_embeddings=2048, tie_word_embeddings=False, **SHAPES[args.size])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # initialising 1B on a CPU is slow
        model = LlamaForCausalLM(cfg).to(DTYPES[args.dtype])
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.out}: random Llama {args.size}, {n / 1e9:.2f} B parameters, {args.dtype}")


if __name__ == "__main__":
    main()
