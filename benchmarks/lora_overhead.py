"""What CoRA's per-sample low-rank path costs, measured side by side in one run.

    python benchmarks/lora_overhead.py [--backbone smollm2-135m] [--device cpu|cuda] [--dtype fp32]

One batch of B = 8 ML-1M-style prompts (~150 tokens). Each variant runs after a warm-up; the
table shows the median of ``--repeats`` timed runs and the ratio to the frozen forward:

  frozen forward                 the backbone alone (no collaborative weights)
  CoRA forward                   generator + per-sample low-rank path (lowrank.py)
  frozen forward + act. backward backward to the input activations (what any adapter must pay)
  CoRA training step             forward + backward + AdamW step on generator and B
  ... dropout off                the same step without dropout (on a CPU the masks cost ~3 %)
  merged-weight forward          eq. 5 taken literally: W + s (A_b B)^T built for every sample
  per-sample loop                CoRA forward one sample at a time (B forward passes)
  peft LoRA forward              a standard (shared) LoRA of the same rank on the same modules

Goals (issue 5): CoRA forward <= 1.05x frozen; CoRA step <= 1.15x frozen fwd + act. backward;
merged and loop >= 5x slower than CoRA. Also prints the frozen forward's achieved GFLOP/s next
to a matmul peak measured on this machine in this run.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import pandas as pd
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from cora.cf.models import MatrixFactorization
from cora.config import LLMConfig
from cora.llm.backbone import load_backbone
from cora.llm.lowrank import CollaborativeLinear
from cora.methods.cora import CoRA


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int, warmup: int = 2) -> float:
    """Median wall time in ms."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def interleaved(rows, device, repeats: int, console) -> dict[str, float]:
    """Median ms per variant, timed in rounds (one run of every variant per round) so that a
    machine whose speed drifts (shared, throttled) slows all variants alike, not whichever
    variant happened to run during the slow minute."""
    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    for name, fn in rows:  # warm-up
        fn()
    for r in range(repeats):
        for name, fn in rows:
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1000)
        console.log(f"round {r + 1}/{repeats}: " + ", ".join(f"{n.split(' (')[0]} {t[-1]:.0f}" for n, t in times.items()))
    return {name: statistics.median(t) for name, t in times.items()}


def prompt_rows(n: int = 8) -> pd.DataFrame:
    """ML-1M-like rows: 6 history titles and a target, ~145 tokens with SmolLM2's tokenizer (ML-1M
    valid prompts: mean 163)."""
    titles = [f"Film {k} Part {k % 3 + 1} (199{k % 10})" for k in range(40)]
    return pd.DataFrame({
        "uid": range(1, n + 1), "iid": range(1, n + 1), "label": [k % 2 for k in range(n)],
        "his": [[0] + list(range(1, 7))] * n, "his_title": [[""] + titles[k:k + 6] for k in range(n)],
        "title": [titles[20 + k] for k in range(n)], "not_cold": [1] * n, "timestamp": range(n),
    })


def merged_forward(self: CollaborativeLinear, x: torch.Tensor) -> torch.Tensor:
    """Eq. 5 literally: one materialised (d_out, d_in) weight per sample."""
    a = self._weights.a_by_width[self.base.in_features].to(x.dtype)            # (B, d_in, r)
    delta_w = torch.einsum("bir,ro->boi", a, self.lowrank_B.to(x.dtype)) * self.scale
    w = self.base.weight.unsqueeze(0) + delta_w                                  # (B, d_out, d_in)
    out = torch.einsum("bti,boi->bto", x.reshape(x.shape[0], -1, x.shape[-1]), w)
    if self.base.bias is not None:
        out = out + self.base.bias
    return out.reshape(*x.shape[:-1], -1)


def frozen_flops(model, tokens: int, batch: int, seq: int) -> float:
    """2 x non-embedding parameters x tokens + attention scores and values (no LM head: the
    scorer applies one row of it)."""
    cfg = model.config
    layer_params = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n and p.ndim == 2)
    attn = 4 * cfg.num_hidden_layers * batch * seq * seq * cfg.hidden_size
    return 2 * layer_params * tokens + attn


def matmul_peak(device, dtype, n: int = 2048) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = timed(lambda: a @ b, device, repeats=7)
    return 2 * n ** 3 / (ms / 1000) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--modules", default="qkvo")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    console = Console()

    backbone = load_backbone(args.backbone, dtype=args.dtype, device=args.device)
    device = backbone.device
    peft_llm = copy.deepcopy(backbone.model)  # before CoRA wraps the original's modules
    cfg = LLMConfig(data="", backbone=args.backbone, modules=args.modules, rank=args.rank, dtype=args.dtype)
    cf = MatrixFactorization(16, 16, dim=256, init_std=0.1)
    method = CoRA(backbone, cfg, cf).to(device)
    with torch.no_grad():  # a trained-looking B: a zero B would let kernels skip nothing but still
        for w in method.adapter.wrapped.values():
            w.lowrank_B.normal_(std=0.02)
    enc = method.encode(prompt_rows(), "movies")
    batch = {k: v.to(device) for k, v in method.collate(enc, list(range(len(enc)))).items()}
    bsz, seq = batch["input_ids"].shape
    tokens = int(batch["attention_mask"].sum())

    def frozen():
        with torch.no_grad():
            method.score(batch)

    def cora_fwd():
        with torch.no_grad():
            method(batch)

    embed = method.llm.get_input_embeddings()

    def frozen_fwd_bwd():
        x = embed(batch["input_ids"]).detach().requires_grad_()
        method.score(batch, inputs_embeds=x).sum().backward()

    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)

    def cora_step(dropout: bool = True):
        method.train(dropout)  # train(False) = the same step with every dropout off
        loss = F.binary_cross_entropy_with_logits(method(batch), batch["label"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.eval()

    def merged():
        originals = {}
        for w in method.adapter.wrapped.values():
            originals[w] = w.forward
            w.forward = merged_forward.__get__(w)
        try:
            cora_fwd()
        finally:
            for w, f in originals.items():
                w.forward = f

    singles = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(bsz)]

    def loop():
        with torch.no_grad():
            for one in singles:
                # Each sample alone, without its padding (what a per-sample implementation does).
                keep = one["attention_mask"][0].bool()
                method({**one, "input_ids": one["input_ids"][:, keep], "attention_mask": one["attention_mask"][:, keep]})

    from peft import LoraConfig, inject_adapter_in_model
    from cora.llm.lowrank import parse_modules

    peft_llm = inject_adapter_in_model(LoraConfig(r=args.rank, lora_alpha=2 * args.rank,
                                                  target_modules=list(parse_modules(args.modules))), peft_llm)
    peft_llm.eval()
    from cora.llm.scoring import yes_logits

    def peft_fwd():
        with torch.no_grad():
            yes_logits(peft_llm, backbone.yes_token_id, batch["attention_mask"], input_ids=batch["input_ids"])

    method.eval()
    rows = [("frozen forward", frozen), ("CoRA forward", cora_fwd), ("frozen forward + act. backward", frozen_fwd_bwd),
            ("CoRA training step", cora_step), ("CoRA training step, dropout off", lambda: cora_step(False)),
            ("merged-weight forward (eq. 5)", merged),
            ("per-sample loop", loop), ("peft LoRA forward", peft_fwd)]
    ms = interleaved(rows, device, args.repeats, console)
    peak = matmul_peak(device, method.llm.dtype)
    achieved = frozen_flops(method.llm, tokens, bsz, seq) / (ms["frozen forward"] / 1000) / 1e9

    t = Table(title=f"{args.backbone} {args.dtype} on {device}: batch {bsz} x {seq} tokens ({tokens} real), "
                    f"{args.modules} r={args.rank}, median of {args.repeats}")
    for c in ("variant", "ms", "x frozen fwd"):
        t.add_column(c, justify="right" if c != "variant" else "left")
    for name, _ in rows:
        t.add_row(name, f"{ms[name]:.1f}", f"{ms[name] / ms['frozen forward']:.2f}")
    console.print(t)
    goals = [
        ("CoRA forward / frozen forward <= 1.05", ms["CoRA forward"] / ms["frozen forward"], 1.05, "<="),
        ("CoRA step / (frozen fwd + act. bwd) <= 1.15", ms["CoRA training step"] / ms["frozen forward + act. backward"], 1.15, "<="),
        ("  the same without dropout <= 1.15", ms["CoRA training step, dropout off"] / ms["frozen forward + act. backward"], 1.15, "<="),
        ("merged / CoRA forward >= 5", ms["merged-weight forward (eq. 5)"] / ms["CoRA forward"], 5.0, ">="),
        ("loop / CoRA forward >= 5", ms["per-sample loop"] / ms["CoRA forward"], 5.0, ">="),
    ]
    for text, value, bound, op in goals:
        ok = value <= bound if op == "<=" else value >= bound
        console.print(f"{'MET ' if ok else 'MISS'}  {text}: {value:.2f}")
    console.print(f"frozen forward: {achieved:.1f} GFLOP/s achieved vs {peak:.1f} GFLOP/s matmul peak "
                  f"({100 * achieved / peak:.0f} %)")


if __name__ == "__main__":
    main()
