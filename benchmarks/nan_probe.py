"""Where a NaN can come from in a padded CoRA batch: left vs right padding x sdpa vs eager x dtype.

    python benchmarks/nan_probe.py [--backbone smollm2-135m] [--device cpu] [--batch 8]

A left-padded batch has query rows whose every key is masked (the pads before a short prompt). A
fused attention kernel may return NaN for such a row (pytorch #119320, #125674 for CUDA's
memory-efficient kernel in bf16 / fp16). The loss never reads a pad position, but the low-rank
path's weight gradient sums over every position: ``grad B = sum_t h_t^T grad_out_t``, and
0 x NaN = NaN, so one NaN at a pad poisons B's gradient. Right padding (cora's since 2026-12-06)
has no fully-masked row: each pad attends to the real tokens before it.

For each combination this runs one CoRA training forward + backward (random MF vectors, B set to
small random values so the per-pair path is live) on prompts whose lengths differ ~10-fold, and
prints the non-finite values in the hidden states at pad / real positions, the loss and whether
every gradient is finite. Run it on the machine whose kernels you doubt (a GPU: --device cuda).
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from cora.cf.models import MatrixFactorization
from cora.config import LLMConfig
from cora.llm.backbone import load_backbone
from cora.llm.scoring import position_ids_for
from cora.llm.tokenize import last_positions, left_pad, right_pad
from cora.methods.cora import CoRA

WORDS = ("The user watched these movies in order: Toy Story (1995), Heat (1995), Casino (1995), "
         "Sabrina (1995), Jumanji (1995), GoldenEye (1995), Balto (1995), Nixon (1995), Othello (1995), "
         "Now and Then (1995), Persuasion (1995), Clueless (1995). Will the user enjoy Fargo (1996)? "
         "Answer with Yes or No. #Answer:").split()


def prompts(tokenizer, n: int) -> list[list[int]]:
    """n prompts from ~10 % to 100 % of the long one's words: lengths ~10x apart."""
    out = []
    for k in range(n):
        words = WORDS[-max(4, int(len(WORDS) * (k + 1) / n)):]
        out.append([tokenizer.bos_token_id or 0, *tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]])
    return out


def probe(method: CoRA, seqs, padding: str, device) -> dict:
    pad = left_pad if padding == "left" else right_pad
    ids, mask = (t.to(device) for t in pad(seqs, method.pad_token_id))
    batch = {"uid": torch.arange(1, len(seqs) + 1, device=device), "iid": torch.arange(1, len(seqs) + 1, device=device)}
    method.train()
    method.zero_grad(set_to_none=True)
    with method.adapter.weights(method.collaborative_weights(batch)):
        hidden = method.llm.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask),
                                          use_cache=False).last_hidden_state
        last = mask.shape[1] - 1 if padding == "left" else None
        rows = torch.arange(len(seqs), device=device)
        at = torch.full_like(rows, last) if last is not None else last_positions(mask)
        logit = hidden[rows, at].float() @ method.llm.get_output_embeddings().weight[method.yes_token_id].float()
        loss = F.binary_cross_entropy_with_logits(logit - logit.detach().mean(), (rows % 2).float())
        loss.backward()
    bad = ~torch.isfinite(hidden.float())
    grads = [p.grad for p in method.parameters() if p.requires_grad and p.grad is not None]
    return {"pad_nonfinite": int(bad[mask == 0].sum()), "real_nonfinite": int(bad[mask == 1].sum()),
            "loss": float(loss), "grads_finite": all(bool(torch.isfinite(g).all()) for g in grads),
            "pads": int((mask == 0).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtypes", default="fp32,bf16,fp16")
    args = ap.parse_args()
    table = Table(title=f"{args.backbone} on {args.device}: one CoRA training step on {args.batch} prompts "
                        "of ~10-fold different lengths")
    for c in ("dtype", "attention", "padding", "pad positions", "non-finite at pads", "non-finite at real tokens",
              "loss", "gradients finite"):
        table.add_column(c)
    for dtype, attention in itertools.product(args.dtypes.split(","), ("sdpa", "eager")):
        back = load_backbone(args.backbone, dtype=dtype, device=args.device, attention=attention)
        cfg = LLMConfig(method="cora", dtype=dtype, rank=16, alpha=32.0, lora_dropout=0.0, seed=0)
        torch.manual_seed(0)
        method = CoRA(back, cfg, MatrixFactorization(100, 100, dim=256)).to(back.device)
        with torch.no_grad():
            for name, p in method.named_parameters():
                if name.endswith("lowrank_B"):
                    p.normal_(0, 0.01)
        seqs = prompts(back.tokenizer, args.batch)
        for padding in ("left", "right"):
            r = probe(method, seqs, padding, back.device)
            table.add_row(dtype, attention, padding, str(r["pads"]), str(r["pad_nonfinite"]), str(r["real_nonfinite"]),
                          f"{r['loss']:.4f}", "yes" if r["grads_finite"] else "NO")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
