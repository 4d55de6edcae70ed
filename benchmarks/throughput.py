"""CoRA training and scoring throughput on real ML-1M prompts, side by side in one run.

    python benchmarks/throughput.py [--data runs/ml1m] [--backbone smollm2-135m] [--dtypes fp32,bf16]
                                    [--batches 1,8,32] [--budget-s 540]

For every (dtype, batch size) cell, a fresh child process loads the backbone, builds CoRA on a
random MF of the paper's size (throughput does not depend on CF quality), and times
  train: optimizer steps on length-bucketed training batches (the loop's sampler)
  score: Yes logits for length-sorted validation rows (the loop's scorer)
after one warm-up each, then reports samples/s and the child's peak RSS. A fresh process per
cell makes the peak RSS that cell's own. A cell whose estimated time (from the cells already
measured) would overrun ``--budget-s`` is reported as skipped with its estimate.

It also prints the padding fraction of training batches on ML-1M with and without length
bucketing (same seed, same batch size).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

SHARED_ZIP = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "collm-ml-1m.zip"


def dataset_folder(data: str | None) -> Path:
    if data and Path(data).exists():
        return Path(data)
    from cora.data.collm_import import import_collm

    if not SHARED_ZIP.exists():
        sys.exit(f"no --data folder and no {SHARED_ZIP}: run `cora data import-collm` first")
    out = Path(tempfile.mkdtemp()) / "ml1m"
    import_collm(SHARED_ZIP, out, trust_pickle=True)
    return out


def build(data: Path, backbone: str, dtype: str):
    from cora.cf.models import MatrixFactorization
    from cora.config import LLMConfig
    from cora.data.store import load_dataset
    from cora.llm.backbone import load_backbone
    from cora.methods.cora import CoRA

    ds = load_dataset(data)
    torch.manual_seed(0)
    cfg = LLMConfig(data=str(data), backbone=backbone, dtype=dtype)
    method = CoRA(load_backbone(backbone, dtype=dtype), cfg, MatrixFactorization(ds.n_users, ds.n_items, dim=256))
    with torch.no_grad():  # a trained-looking B (a zero B is not what a trained run multiplies by)
        for w in method.adapter.wrapped.values():
            w.lowrank_B.normal_(std=0.02)
    return method, ds


def run_cell(data: str, backbone: str, dtype: str, batch: int, train_steps: int, score_batches: int, queue) -> None:
    """One (dtype, batch) cell in its own process; puts a result dict on ``queue``."""
    from cora.train.sampling import EpochBatches

    method, ds = build(Path(data), backbone, dtype)
    n_rows = batch * (train_steps + 1)
    train = method.encode(ds.split("train").sample(n=max(n_rows * 8, 256), random_state=0), ds.domain)
    valid = method.encode(ds.split("valid").sample(n=batch * (score_batches + 1), random_state=0), ds.domain)
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)
    sampler = iter(EpochBatches(len(train), batch, seed=0, lengths=train.lengths, window=32))

    def step() -> int:
        rows = next(sampler)
        b = method.collate(train, rows)
        method.train()
        loss = F.binary_cross_entropy_with_logits(method(b).float(), b["label"].float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return len(rows)

    order = np.argsort(valid.lengths, kind="stable").tolist()
    score_rows = [order[i:i + batch] for i in range(0, len(order), batch)]

    @torch.no_grad()
    def score(rows) -> int:
        method.eval()
        method(method.collate(valid, rows))
        return len(rows)

    step()  # warm-up
    t0 = time.perf_counter()
    trained = sum(step() for _ in range(train_steps))
    train_s = time.perf_counter() - t0
    score(score_rows[0])  # warm-up
    t0 = time.perf_counter()
    scored = sum(score(r) for r in score_rows[1:score_batches + 1])
    score_s = time.perf_counter() - t0
    queue.put({"train_sps": trained / train_s, "score_sps": scored / score_s, "train_step_s": train_s / train_steps,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def padding_report(data: Path, backbone: str, batch: int = 8) -> tuple[float, float, float]:
    from cora.train.sampling import EpochBatches, padding_fraction

    method, ds = build(data, backbone, "fp32")
    lengths = method.encode(ds.split("train"), ds.domain).lengths
    plain = padding_fraction(lengths, list(EpochBatches(len(lengths), batch, seed=42, window=1)))
    bucketed = padding_fraction(lengths, list(EpochBatches(len(lengths), batch, seed=42, lengths=lengths, window=32)))
    return plain, bucketed, float(np.mean(lengths))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="runs/ml1m")
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--train-rows", type=int, default=8, help="training rows timed per cell (at least one step)")
    ap.add_argument("--score-rows", type=int, default=16, help="scored rows timed per cell (at least one batch)")
    ap.add_argument("--budget-s", type=float, default=540.0)
    args = ap.parse_args()
    console = Console()
    start = time.time()
    data = dataset_folder(args.data)

    plain, bucketed, mean_len = padding_report(data, args.backbone)
    console.print(f"ML-1M train prompts: mean {mean_len:.0f} tokens; padding in batches of 8: "
                  f"{100 * plain:.1f} % shuffled, {100 * bucketed:.1f} % length-bucketed (window 32 batches)")

    ctx = mp.get_context("spawn")
    cells = [(d, int(b)) for d in args.dtypes.split(",") for b in args.batches.split(",")]
    # Cheapest first: each dtype's smallest batch measures its cost per row, from which the
    # larger cells are estimated and skipped (with the estimate) when they would overrun.
    smallest = {d: min(b for dd, b in cells if dd == d) for d, _ in cells}
    cells.sort(key=lambda c: (c[1] > smallest[c[0]], c[1], c[0] != "fp32"))
    results: dict[tuple[str, int], dict | str] = {}
    per_row_s: dict[str, float] = {}  # wall seconds per (trained + scored) row, per dtype
    for dtype, batch in cells:
        steps = max(1, args.train_rows // batch)
        score_batches = max(1, args.score_rows // batch)
        rows = batch * (steps + 1) + batch * (score_batches + 1)
        left = args.budget_s - (time.time() - start)
        if dtype in per_row_s and 15 + rows * per_row_s[dtype] > left:
            results[(dtype, batch)] = f"skipped: ~{15 + rows * per_row_s[dtype]:.0f} s > {left:.0f} s left"
            continue
        queue = ctx.Queue()
        t0 = time.time()
        proc = ctx.Process(target=run_cell, args=(str(data), args.backbone, dtype, batch, steps, score_batches, queue))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            results[(dtype, batch)] = f"failed (exit {proc.exitcode})"
            continue
        res = queue.get()
        results[(dtype, batch)] = res
        per_row_s[dtype] = min(per_row_s.get(dtype, float("inf")), max(time.time() - t0 - 15, 1.0) / rows)
        console.log(f"{dtype} batch {batch}: train {res['train_sps']:.2f} samples/s, score {res['score_sps']:.2f} "
                    f"samples/s, peak RSS {res['peak_rss_mb']:.0f} MB ({time.time() - t0:.0f} s)")

    t = Table(title=f"CoRA on {args.backbone}, ML-1M prompts, {torch.get_num_threads()} threads")
    for c in ("dtype", "batch", "train samples/s", "train s/step", "score samples/s", "peak RSS MB"):
        t.add_column(c, justify="right")
    for (dtype, batch), res in sorted(results.items(), key=lambda kv: (kv[0][0] != "fp32", kv[0][1])):
        if isinstance(res, str):
            t.add_row(dtype, str(batch), res, "", "", "")
        else:
            t.add_row(dtype, str(batch), f"{res['train_sps']:.2f}", f"{res['train_step_s']:.2f}",
                      f"{res['score_sps']:.2f}", f"{res['peak_rss_mb']:.0f}")
    console.print(t)
    for batch in sorted({b for _, b in results}):
        a, b = results.get(("fp32", batch)), results.get(("bf16", batch))
        if isinstance(a, dict) and isinstance(b, dict):
            console.print(f"batch {batch}: bf16 / fp32 time per sample: train {a['train_sps'] / b['train_sps']:.2f}x, "
                          f"score {a['score_sps'] / b['score_sps']:.2f}x")
    console.print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
