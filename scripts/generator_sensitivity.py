"""How much does CoRA's generator output depend on the pair? A measurement, not a test.

For each CF run given, on the same seeded training pairs:
- the CF embeddings' scale: mean L2 norm of the user / item vectors, mean per-dimension std;
- the generator at initialisation (seeded, the shapes of a SmolLM2 CoRA run, dropout off): the
  spread of A(u, i) over pairs, ``mean_p ||A_p - mean_q A_q||_F`` (every A has unit norm, so 0
  means one A for every pair and ~1.41 means unrelated A's), without and with
  ``input_norm: layernorm``.
A generator whose A barely moves with the pair gives the LLM nearly the same weights for every
pair: its gradient then has little pair-specific signal to follow.

    python scripts/generator_sensitivity.py runs/experiments/ml1m-cpu/cf-mf runs/experiments/ml1m-cpu/cf-lightgcn ...
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from cora.cf.data import pad_histories
from cora.cf.train import load_cf_run
from cora.methods.generator import CollaborativeQueryGenerator


@torch.no_grad()
def measure(run: str, pairs: int, seed: int, d_model: int, rank: int) -> dict:
    model, cfg, ds = load_cf_run(run)
    model.eval()
    df = ds.split("train").sample(n=pairs, random_state=seed)
    batch = {"uid": torch.tensor(df["uid"].to_numpy()), "iid": torch.tensor(df["iid"].to_numpy())}
    if model.uses_history:
        batch["his"] = pad_histories(df["his"], model.max_len)
    user, item = model.user_embedding(batch).float(), model.item_embedding(batch["iid"]).float()
    out = {"run": run, "model": cfg.model, "user_norm": user.norm(dim=-1).mean().item(),
           "item_norm": item.norm(dim=-1).mean().item(), "user_dim_std": user.std(0).mean().item(),
           "item_dim_std": item.std(0).mean().item()}
    z = lambda x: (x - x.mean(0)) / x.std(0).clamp_min(1e-6)  # noqa: E731 (per-dimension z-score over the pairs)
    variants = {"none": (user, item), "layernorm": (F.layer_norm(user, user.shape[-1:]), F.layer_norm(item, item.shape[-1:])),
                "zscore": (z(user), z(item))}
    for norm, (u, i) in variants.items():
        torch.manual_seed(seed)
        gen = CollaborativeQueryGenerator(input_dim=2 * model.dim, widths=[d_model], rank=rank, hidden=2 * model.dim,
                                          n_layers=2, ffn=1024, dropout=0.0).eval()
        a = gen(torch.cat([u, i], dim=-1))[d_model].flatten(1)
        out[f"A_spread_{norm}"] = (a - a.mean(0)).norm(dim=-1).mean().item()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--pairs", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--d-model", type=int, default=576)
    p.add_argument("--rank", type=int, default=16)
    a = p.parse_args()
    rows = [measure(r, a.pairs, a.seed, a.d_model, a.rank) for r in a.runs]
    cols = ["model", "user_norm", "item_norm", "user_dim_std", "item_dim_std", "A_spread_none", "A_spread_layernorm", "A_spread_zscore"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) if c == "model" else f"{r[c]:.4f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
