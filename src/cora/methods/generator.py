"""CoRA's collaborative query generator: a small BERT-style Q-Former (DESIGN sec. 4 and 7).

Input: ``e = concat(user_emb, item_emb)`` (one "token" per pair). Learnable queries attend to each
other (self-attention) and to ``e`` (cross-attention) in every block; post-LayerNorm as in BERT.
The query outputs go through one linear head per needed input width (``d_model``, and the FFN
width when the MLP's down projection is adapted), are averaged over queries, L2-normalised over
the whole ``width * r`` vector (unit Frobenius norm), and reshaped to ``A ∈ R^{width × r}``.

Computed as what it is, with the parameters (and checkpoints) of the plain modules: the
cross-attention has a single key / value, the pair embedding, so its softmax is exactly 1 and its
output is ``out_proj(v_proj(e))`` for every query; the query / key projections and the softmax are
dead work and are skipped. In training the attention's dropout still drops whole (query, head)
weights, drawn exactly as ``nn.MultiheadAttention`` draws them (same shape, same call, so the
same random numbers). The head is affine, so it is applied once to the mean of the queries.
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

    def forward(self, q: torch.Tensor, pair_emb: torch.Tensor) -> torch.Tensor:
        q = self.self_norm(q + self.drop(self.self_attn(q, q, q, need_weights=False)[0]))
        q = self.cross_norm(q + self.drop(self.attend_to_pair(q.shape[1], pair_emb)))
        return self.ffn_norm(q + self.ffn(q))

    def attend_to_pair(self, n_queries: int, pair_emb: torch.Tensor) -> torch.Tensor:
        """``cross_attn(q, e, e)`` with one key: ``out_proj(v_proj(e))``, (batch, 1 or n_queries, hidden)."""
        attn = self.cross_attn
        hidden = attn.embed_dim
        w_v = attn.in_proj_weight[2 * hidden:] if attn._qkv_same_embed_dim else attn.v_proj_weight
        v = F.linear(pair_emb, w_v, attn.in_proj_bias[2 * hidden:])  # (batch, hidden)
        if not (self.training and attn.dropout > 0):
            return attn.out_proj(v).unsqueeze(1)  # the same for every query
        # The attention weights are all 1; MHA drops them with shape (batch, heads, queries, keys=1).
        batch, heads = v.shape[0], attn.num_heads
        keep = F.dropout(v.new_ones(batch, heads, n_queries, 1), attn.dropout)
        per_head = keep * v.reshape(batch, heads, 1, hidden // heads)  # (batch, heads, queries, head dim)
        # Laid out (queries, batch, hidden) in memory and returned transposed, as MHA does: the
        # block's next dropout fills its mask in memory order, so the layout decides which
        # element each random number drops.
        merged = per_head.permute(2, 0, 1, 3).reshape(n_queries, batch, hidden)
        return attn.out_proj(merged).transpose(0, 1)


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
        for block in self.blocks:
            q = block(q, pair_emb)
        flat = self.head(q.mean(dim=1))  # affine: the head of the mean is the mean of the heads
        out: dict[int, torch.Tensor] = {}
        for width, chunk in zip(self.widths, flat.split([w * self.rank for w in self.widths], dim=-1)):
            out[width] = F.normalize(chunk, dim=-1).reshape(batch, width, self.rank)
        return out
