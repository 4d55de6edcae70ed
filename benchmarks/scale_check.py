"""A 7B CoRA-MF on this machine, without a download: load, train a few steps, score, and say what
a GPU needs.

    python benchmarks/scale_check.py [--batch 2] [--steps 3] [--tokens 160] [--json OUT.json]

1. Builds (once, cached in ``--folder``) a Llama-2-7B-shaped model folder with random bf16
   weights: d 4096, 32 layers, 32 heads, FFN 11008, the vocabulary of SmolLM2's tokenizer (49,152
   instead of Llama-2's 32,000: +0.14 B parameters). Written tensor by tensor, never a whole fp32
   model in memory. Speeds and memory do not depend on the weights' values.
2. Loads it the way ``cora train --backbone FOLDER --dtype bf16`` does (:func:`load_backbone`).
3. Trains CoRA-MF (qkvo, r 16, the paper's 8-layer generator for d >= 2048) with the one training
   loop (``fit``) in bf16 with gradient checkpointing, ``--steps`` steps of ``--batch`` prompts of
   ``--tokens`` tokens (random ids; ML-1M's prompts are ~150-200 tokens), then scores one batch.
4. Measures the activation bytes per token a training forward keeps for the backward pass, with
   and without gradient checkpointing, and turns them into per-row GPU memory estimates for 40 /
   80 GB cards (weights + trainable state + activations; the CUDA context, allocator slack and
   SDPA workspaces are not in them: keep ~10 % spare).

Prints load time, seconds per step, peak RSS per phase, the trainable and checkpoint sizes and
the estimates table (docs/gpu.md quotes it). Needs ~15 GB of free memory and ~14 GB of disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_llama import SHAPES  # noqa: E402

from cora.cf.models import MatrixFactorization  # noqa: E402
from cora.config import LLMConfig  # noqa: E402
from cora.llm.backbone import (DEFAULT_BACKBONE, gguf_cache_dir, load_backbone, set_gradient_checkpointing,  # noqa: E402
                               smollm2_gguf_path)
from cora.memory import measured  # noqa: E402
from cora.methods.base import EncodedSplit  # noqa: E402
from cora.methods.cora import CoRA  # noqa: E402
from cora.train.loop import fit, predict  # noqa: E402

GB = 1e9
console = Console()


def build_folder(folder: Path, tokenizer_from: Path, size: str = "7b") -> None:
    """A Llama-2-7B-shaped (or ``size``-shaped) model with random bf16 weights, written shard by shard."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_from)
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      max_position_embeddings=4096, tie_word_embeddings=False, **SHAPES[size])
    cfg.dtype = "bfloat16"  # written to config.json; load_backbone reads the weights in bf16 either way
    with torch.device("meta"):
        shapes = {n: (tuple(p.shape), n.endswith("norm.weight")) for n, p in LlamaForCausalLM(cfg).named_parameters()}
    tmp = Path(tempfile.mkdtemp(prefix=".scale-", dir=folder.parent))
    gen = torch.Generator().manual_seed(0)
    shard, shard_bytes, index, k = {}, 0, {}, 0

    def flush():
        nonlocal shard, shard_bytes, k
        if shard:
            k += 1
            name = f"model-{k:05d}.safetensors"
            save_file(shard, str(tmp / name), metadata={"format": "pt"})
            index.update({n: name for n in shard})
            shard, shard_bytes = {}, 0

    started = time.time()
    for n, (shape, is_norm) in shapes.items():
        t = torch.ones(shape, dtype=torch.bfloat16) if is_norm else \
            (torch.randn(shape, generator=gen, dtype=torch.float32) * 0.02).to(torch.bfloat16)
        shard[n] = t
        shard_bytes += t.numel() * 2
        if shard_bytes >= 2 * GB:
            flush()
    flush()
    (tmp / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(int(np.prod(s)) * 2 for s, _ in shapes.values())}, "weight_map": index}))
    cfg.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, folder)
    console.print(f"built {folder} ({sum(int(np.prod(s)) for s, _ in shapes.values()) / 1e9:.2f} B parameters, "
                  f"bf16) in {time.time() - started:.0f} s")


def random_split(n: int, tokens: int, vocab: int, bos: int, seed: int) -> EncodedSplit:
    g = np.random.default_rng(seed)
    ids = [[bos, *g.integers(100, vocab, tokens - 1).tolist()] for _ in range(n)]
    frame = pd.DataFrame({"uid": g.integers(1, 100, n), "iid": g.integers(1, 100, n), "label": np.arange(n) % 2,
                          "not_cold": 1})
    return EncodedSplit(input_ids=ids, uid=torch.tensor(frame["uid"].to_numpy()),
                        iid=torch.tensor(frame["iid"].to_numpy()),
                        label=torch.tensor(frame["label"].to_numpy(), dtype=torch.float32), his=None, frame=frame)


def saved_bytes(method, batch, params: set[int]) -> int:
    """Bytes autograd keeps for the backward pass of one training forward: distinct storages,
    parameters not counted. The tensors are held until the count is taken (a dropped tensor's
    address would be reused by the next one and counted once); the graph is then dropped
    without a backward pass."""
    held: dict[int, torch.Tensor] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            held[storage.data_ptr()] = t
        return t

    method.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = method(batch)
    total = sum(t.untyped_storage().nbytes() for t in held.values())
    del out, held
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SHAPES), default="7b", help="1b: a quick check of this script")
    ap.add_argument("--folder", type=Path, help="where the random model is cached (default: "
                    "$CORA_CACHE or ~/.cache/cora, scale-check/llama-SIZE-shaped)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=160)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.folder = args.folder or (Path(os.environ.get("CORA_CACHE") or Path.home() / ".cache" / "cora")
                                  / "scale-check" / f"llama-{args.size}-shaped")
    report: dict = {"size": args.size, "batch": args.batch, "steps": args.steps, "tokens": args.tokens,
                    "threads": torch.get_num_threads(), "cpu": _cpu_name()}
    t_start = time.time()

    if not (args.folder / "config.json").exists():
        args.folder.parent.mkdir(parents=True, exist_ok=True)
        tokenizer_from = gguf_cache_dir(smollm2_gguf_path(), DEFAULT_BACKBONE)
        if not tokenizer_from.is_dir():  # the converted SmolLM2 folder holds the tokenizer
            load_backbone(DEFAULT_BACKBONE)
        t0 = time.time()
        build_folder(args.folder, tokenizer_from, args.size)
        report["build_s"] = round(time.time() - t0, 1)

    memory: dict = {}
    t0 = time.time()
    with measured(memory, "load"):
        back = load_backbone(str(args.folder), dtype="bf16")
    report["load_s"] = round(time.time() - t0, 1)
    n_params = sum(p.numel() for p in back.model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in back.model.parameters())
    inv_freq = {str(b.dtype) for n, b in back.model.named_buffers() if n.endswith("inv_freq")}
    console.print(f"loaded {n_params / 1e9:.2f} B parameters in {report['load_s']} s, peak RSS "
                  f"{memory['load']['peak_rss_mb'] / 1024:.1f} GiB; inv_freq {', '.join(inv_freq)}")

    cfg = LLMConfig(method="cora", dtype="bf16", rank=16, alpha=32.0, modules="qkvo", gradient_checkpointing=True,
                    batch_size=args.batch, eval_batch_size=args.batch, max_steps=args.steps, eval_every=args.steps,
                    warmup_steps=0, calibrate_logit=False, lr=1e-3, patience=10, seed=0)
    mf = MatrixFactorization(100, 100, dim=256)
    method = CoRA(back, cfg, mf)
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    train = random_split(args.batch * args.steps, args.tokens, len(back.tokenizer), back.bos_token_id, 1)
    valid = random_split(max(2, args.batch), args.tokens, len(back.tokenizer), back.bos_token_id, 2)  # both labels
    out = Path(tempfile.mkdtemp(prefix="scale-check-"))
    try:
        summary = fit(method, train, valid, cfg, out, resume=False, show_progress=True, keep_checkpoint=True)
        ckpt_bytes = sum(f.stat().st_size for f in (out / "checkpoint").rglob("*") if f.is_file())
        weights_bytes = sum(p.numel() * 4 for p in method.parameters() if p.requires_grad)  # what it saves
    finally:
        shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    with measured(memory, "score"):
        scores = predict(method, valid, max(2, args.batch))
    score_s = time.time() - t0
    assert np.isfinite(scores).all(), "non-finite scores"

    batch = {k: v for k, v in method.collate(train, list(range(args.batch))).items()}
    params = {p.untyped_storage().data_ptr() for p in method.parameters()}
    per_token = {}
    for on in (False, True):
        method.cfg.gradient_checkpointing = on
        set_gradient_checkpointing(method.llm, on)
        per_token[on] = saved_bytes(method, batch, params) / (args.batch * args.tokens)
    # Under checkpointing each layer's input is held by the checkpoint itself, not through
    # autograd's saved tensors: count it.
    per_token[True] += back.model.config.num_hidden_layers * back.d_model * 2
    method.cfg.gradient_checkpointing = True

    report.update({
        "parameters_b": round(n_params / 1e9, 3), "weights_gb": round(weight_bytes / GB, 2),
        "s_per_step": round(summary["wall_time_s"] / args.steps, 1), "score_s_per_row": round(score_s / len(valid), 2),
        "peak_rss_gb": {k: round(v["peak_rss_mb"] / 1024, 2) for k, v in {**memory, **summary["memory"]}.items()},
        "trainable_m": round(trainable / 1e6, 2), "model_safetensors_mb": round(weights_bytes / 1e6, 1),
        "checkpoint_mb": round(ckpt_bytes / 1e6, 1),
        "activation_kb_per_token": {"checkpointing": round(per_token[True] / 1e3, 1),
                                    "none": round(per_token[False] / 1e3, 1)},
        "skipped_steps": summary["skipped_steps"], "total_s": 0.0,
    })
    report["gpu_estimates"] = gpu_estimates(weight_bytes, trainable, per_token, args.tokens, cfg.rank)
    report["total_s"] = round(time.time() - t_start, 1)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def gpu_estimates(weight_bytes: int, trainable: int, per_token: dict, tokens: int, rank: int) -> list[dict]:
    """Rows of ``tokens`` tokens that fit a 40 / 80 GB card: weights + fp32 trainables, their
    gradients and Adam's two moments (16 bytes each) + activations per row, 10 % kept spare."""
    fixed = weight_bytes + 16 * trainable
    rows = []
    for card in (40, 80):
        usable = 0.9 * card * GB - fixed
        for on in (True, False):
            per_row = per_token[on] * tokens
            rows.append({"card_gb": card, "checkpointing": on, "fixed_gb": round(fixed / GB, 1),
                         "gb_per_row": round(per_row / GB, 3),
                         "max_batch": max(0, int(usable // per_row)) if usable > 0 else 0,
                         "rank": rank})
    return rows


def print_report(r: dict) -> None:
    t = Table(title=f"{r['size'].upper()}-shaped CoRA-MF (bf16, qkvo r 16) on {r['cpu']}, {r['threads']} threads: "
                    f"batch {r['batch']} x {r['tokens']} tokens, {r['steps']} steps")
    t.add_column("measure")
    t.add_column("value", justify="right")
    rows = [("parameters", f"{r['parameters_b']} B ({r['weights_gb']} GB bf16)"),
            ("load (bf16, from safetensors)", f"{r['load_s']} s"),
            ("training step (gradient checkpointing)", f"{r['s_per_step']} s"),
            ("scoring", f"{r['score_s_per_row']} s / row"),
            *[(f"peak RSS: {k}", f"{v} GiB") for k, v in r["peak_rss_gb"].items()],
            ("trainable (generator + B)", f"{r['trainable_m']} M"),
            ("trainable tensors (fp32) / checkpoint/ on disk", f"{r['model_safetensors_mb']} / {r['checkpoint_mb']} MB"),
            ("activations kept per token: checkpointing / none",
             f"{r['activation_kb_per_token']['checkpointing']} / {r['activation_kb_per_token']['none']} kB"),
            ("skipped steps", str(r["skipped_steps"])), ("total wall time", f"{r['total_s']} s")]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    g = Table(title=f"GPU estimate: rows of {r['tokens']} tokens per card (bf16 weights, fp32 trainables + Adam; "
                    "10 % kept spare)")
    for c in ("card", "gradient checkpointing", "fixed GB", "GB per row", "max batch"):
        g.add_column(c, justify="right")
    for e in r["gpu_estimates"]:
        g.add_row(f"{e['card_gb']} GB", "on" if e["checkpointing"] else "off", str(e["fixed_gb"]),
                  str(e["gb_per_row"]), str(e["max_batch"]))
    console.print(g)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


if __name__ == "__main__":
    main()
