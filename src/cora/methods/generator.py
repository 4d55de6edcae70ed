"""CoRA's collaborative query generator: a small BERT-style Q-Former (DESIGN sec. 4 and 7).

Input: ``e = concat(user_emb, item_emb)`` (one "token" per pair). Learnable queries attend to each
other (self-attention) and to ``e`` (cross-attention) in every block; post-LayerNorm as in BERT.
The query outputs go through one linear head per needed input width (``d_model``, and the FFN
width when the MLP's down projection is adapted), are averaged over queries, L2-normalised over
the whole ``width * r`` vector (unit Frobenius norm), and reshaped to ``A ∈ R^{width × r}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cora.errors import CoraError


class QFormerBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, kv_dim: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.self_norm = nn.LayerNorm(hidden, eps=1e-12)
        # The pair embedding is the only key/value token; kdim/vdim let it differ from hidden.
        self.cross_attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True,
                                                kdim=kv_dim, vdim=kv_dim)
        self.cross_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden), nn.Dropout(dropout))
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        q = self.self_norm(q + self.drop(self.self_attn(q, q, q, need_weights=False)[0]))
        q = self.cross_norm(q + self.drop(self.cross_attn(q, kv, kv, need_weights=False)[0]))
        return self.ffn_norm(q + self.ffn(q))


class CollaborativeQueryGenerator(nn.Module):
    """(batch, input_dim) pair embeddings -> {width: (batch, width, rank)} unit-norm A matrices."""

    def __init__(self, input_dim: int, widths: list[int], rank: int = 16, hidden: int = 512, n_queries: int = 4,
                 n_layers: int = 8, n_heads: int = 8, ffn: int = 3072, dropout: float = 0.1):
        super().__init__()
        if hidden % n_heads:  # torch's attention would fail with an assertion deep inside
            raise CoraError(f"gen_heads {n_heads} must divide the generator width {hidden} (2 x the CF run's dim)")
        self.rank, self.widths = rank, list(widths)
        self.queries = nn.Parameter(torch.randn(1, n_queries, hidden) * 0.02)
        self.query_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.query_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(QFormerBlock(hidden, n_heads, ffn, input_dim, dropout) for _ in range(n_layers))
        # One output Linear for all widths, split afterwards: a single matmul per step instead
        # of one per head. Default init (the zero init sits in the adapter's B).
        self.head = nn.Linear(hidden, sum(w * rank for w in self.widths))

    def forward(self, pair_emb: torch.Tensor) -> dict[int, torch.Tensor]:
        batch = pair_emb.shape[0]
        q = self.query_drop(self.query_norm(self.queries.expand(batch, -1, -1)))
        kv = pair_emb.unsqueeze(1)
        for block in self.blocks:
            q = block(q, kv)
        flat = self.head(q).mean(dim=1)  # per-query projection, then mean over queries
        out: dict[int, torch.Tensor] = {}
        for width, chunk in zip(self.widths, flat.split([w * self.rank for w in self.widths], dim=-1)):
            out[width] = F.normalize(chunk, dim=-1).reshape(batch, width, self.rank)
        return out
