"""MF, LightGCN and SASRec behind one interface (DESIGN sec. 7).

Every model maps a batch ``{"uid", "iid", "his"}`` of LongTensors to a user vector and an item
vector of size ``dim``; the CF score is their dot product. LLM methods only ever call
:meth:`CFModel.user_embedding` / :meth:`CFModel.item_embedding`, so any model that implements them
can feed CoRA or CoLLM.
"""

from __future__ import annotations

import torch
from torch import nn

from cora.errors import CoraError


class CFModel(nn.Module):
    """Interface: ``user_embedding(batch)``, ``item_embedding(iid)``, ``forward(batch) -> logits``."""

    name = "cf"
    uses_history = False

    def __init__(self, n_users: int, n_items: int, dim: int):
        super().__init__()
        self.n_users, self.n_items, self.dim = n_users, n_items, dim

    def user_embedding(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def item_embedding(self, iid: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self.user_embedding(batch) * self.item_embedding(batch["iid"])).sum(-1)


class MatrixFactorization(CFModel):
    """Plain dot product of user and item embeddings, no biases (the reference's MF)."""

    name = "mf"

    def __init__(self, n_users: int, n_items: int, dim: int = 256, init_std: float = 0.1, sparse: bool = False):
        super().__init__(n_users, n_items, dim)
        # sparse: gradients only for the batch's rows (for torch.optim.SparseAdam)
        self.user = nn.Embedding(n_users, dim, sparse=sparse)
        self.item = nn.Embedding(n_items, dim, sparse=sparse)
        nn.init.normal_(self.user.weight, std=init_std)
        nn.init.normal_(self.item.weight, std=init_std)

    def user_embedding(self, batch):
        return self.user(batch["uid"])

    def item_embedding(self, iid):
        return self.item(iid)


class LightGCN(CFModel):
    """LightGCN: embeddings propagated over the normalised user-item graph, mean over layers.

    The graph holds the positive training pairs only. Propagation runs over the whole graph in
    each training step (ML-1M's graph is small); :meth:`freeze_propagation` caches the result
    for frozen use by an LLM method.
    """

    name = "lightgcn"

    def __init__(self, n_users: int, n_items: int, dim: int = 256, n_layers: int = 2, init_std: float = 0.1):
        super().__init__(n_users, n_items, dim)
        self.n_layers = n_layers
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user.weight, std=init_std)
        nn.init.normal_(self.item.weight, std=init_std)
        # The graph is data, not a parameter: it is rebuilt from the train split on load.
        self.register_buffer("edge_index", torch.zeros(2, 0, dtype=torch.long), persistent=False)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def set_graph(self, uids: torch.Tensor, iids: torch.Tensor) -> None:
        """Positive training pairs (uid, iid) -> symmetric normalised adjacency D^-1/2 A D^-1/2."""
        n = self.n_users + self.n_items
        pairs = torch.unique(torch.stack([uids, iids]), dim=1)
        rows = torch.cat([pairs[0], pairs[1] + self.n_users])
        cols = torch.cat([pairs[1] + self.n_users, pairs[0]])
        deg = torch.bincount(rows, minlength=n).float()
        inv_sqrt = deg.pow(-0.5)
        inv_sqrt[torch.isinf(inv_sqrt)] = 0.0
        values = inv_sqrt[rows] * inv_sqrt[cols]
        self.adj = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n),
                                           check_invariants=True).coalesce()
        self._cache = None

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is not None:
            return self._cache
        if not hasattr(self, "adj"):
            raise CoraError("LightGCN has no graph: call set_graph() with the positive training pairs")
        x = torch.cat([self.user.weight, self.item.weight])
        layers = [x]
        adj = self.adj.to(x.device)
        for _ in range(self.n_layers):
            x = torch.sparse.mm(adj, x)
            layers.append(x)
        out = torch.stack(layers).mean(0)
        return out[: self.n_users], out[self.n_users:]

    def freeze_propagation(self) -> None:
        with torch.no_grad():
            self._cache = None
            self._cache = tuple(t.detach() for t in self.propagate())

    def train(self, mode: bool = True):
        if mode:
            self._cache = None
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):
        # .to(device) must also move the graph and the frozen cache, which are plain attributes.
        super()._apply(fn, recurse)
        if hasattr(self, "adj"):
            self.adj = fn(self.adj)
        if self._cache is not None:
            self._cache = tuple(fn(t) for t in self._cache)
        return self

    def user_embedding(self, batch):
        return self.propagate()[0][batch["uid"]]

    def item_embedding(self, iid):
        return self.propagate()[1][iid]

    def forward(self, batch):
        users, items = self.propagate()
        return (users[batch["uid"]] * items[batch["iid"]]).sum(-1)


class ReferenceSASRecBlock(nn.Module):
    """One SASRec block as the reference code computes it (Kang & McAuley's TensorFlow SASRec and
    the PyTorch port CoLLM trains its SASRec with), which is not the textbook pre-LN block:

    - the attention query is ``LN(x)`` but keys and values are the un-normalised ``x``, and the
      residual adds to ``LN(x)``: ``x = LN(x) + Attn(LN(x), x, x)``;
    - the feed-forward input is normalised too and is its own residual: ``x = LN(x); x = x + FFN(x)``
      with ``FFN = Linear - Dropout - ReLU - Linear - Dropout``;
    - no key-padding mask: padded positions are zero vectors, zeroed again after every block.
    The residual stream is renormalised twice per block, which keeps SASRec's large learning rate
    (1e-2) stable."""

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim, eps=1e-8)
        self.attn = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-8)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout), nn.ReLU(), nn.Linear(dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, causal: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        q = self.attn_norm(x)
        x = q + self.attn(q, x, x, attn_mask=causal, need_weights=False)[0]
        x = self.ffn_norm(x)
        return (x + self.ffn(x)) * keep


class SASRec(CFModel):
    """SASRec: a causal transformer over the user's earlier positive items.

    The user vector is the output at the last position of the left-padded history (the last
    ``max_len`` ids of ``his``); items share the input embedding table. ``block`` picks the
    transformer block: ``reference`` (:class:`ReferenceSASRecBlock`, what the paper's numbers come
    from; the default of new runs) or ``preln`` (torch's textbook pre-LN encoder layer with a
    key-padding mask; runs trained before the reference block existed use it).
    """

    name = "sasrec"
    uses_history = True

    def __init__(self, n_users: int, n_items: int, dim: int = 256, max_len: int = 25, n_blocks: int = 2,
                 n_heads: int = 1, dropout: float = 0.2, init_std: float = 0.1, block: str = "reference"):
        super().__init__(n_users, n_items, dim)
        if block not in ("reference", "preln"):
            raise CoraError(f"unknown SASRec block '{block}' (choose reference or preln)")
        if dim % n_heads:  # torch's attention would fail with an assertion deep inside
            raise CoraError(f"sas_heads {n_heads} must divide the embedding size dim {dim}")
        self.max_len, self.block = max_len, block
        self.item = nn.Embedding(n_items, dim, padding_idx=0)
        self.pos = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        if block == "reference":
            self.blocks = nn.ModuleList(ReferenceSASRecBlock(dim, n_heads, dropout) for _ in range(n_blocks))
        else:
            layer = nn.TransformerEncoderLayer(dim, n_heads, dim_feedforward=dim, dropout=dropout,
                                               activation="relu", batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, n_blocks, enable_nested_tensor=False)
        self.last_norm = nn.LayerNorm(dim, eps=1e-8 if block == "reference" else 1e-5)
        nn.init.normal_(self.item.weight, std=init_std)
        with torch.no_grad():
            self.item.weight[0].zero_()
        causal = torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)

    def user_embedding(self, batch):
        return self.last_norm(self.encode(batch["his"][:, -self.max_len:])[:, -1])

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """(batch, length, dim): every position's output for left-padded item ids (0 = padding)."""
        pad = seq == 0
        causal = self.causal[-seq.shape[1]:, -seq.shape[1]:]
        x = self.item(seq) * (self.dim ** 0.5) + self.pos.weight[-seq.shape[1]:]
        x = self.drop(x) * (~pad).unsqueeze(-1)
        if self.block == "reference":
            keep = (~pad).unsqueeze(-1).to(x.dtype)
            for block in self.blocks:
                x = block(x, causal, keep)
        else:
            # Left padding: a row that is all padding would give NaN attention; let it see itself.
            key_pad = pad.clone()
            key_pad[:, -1] = False
            x = self.encoder(x, mask=causal, src_key_padding_mask=key_pad)
        return x

    def item_embedding(self, iid):
        return self.item(iid)


def build_cf_model(cfg, n_users: int, n_items: int) -> CFModel:
    """Instantiate the model named by a :class:`cora.config.CFConfig`."""
    if getattr(cfg, "optimizer", "adam") == "sparse-adam" and cfg.model != "mf":
        raise CoraError(f"--optimizer sparse-adam is for mf, not {cfg.model} (its steps touch every row)")
    if cfg.model == "mf":
        return MatrixFactorization(n_users, n_items, cfg.dim, init_std=cfg.init_std,
                                   sparse=getattr(cfg, "optimizer", "adam") == "sparse-adam")
    if cfg.model == "lightgcn":
        return LightGCN(n_users, n_items, cfg.dim, n_layers=cfg.gcn_layers, init_std=cfg.init_std)
    if cfg.model == "sasrec":
        return SASRec(n_users, n_items, cfg.dim, max_len=cfg.max_len, n_blocks=cfg.sas_blocks,
                      n_heads=cfg.sas_heads, dropout=cfg.sas_dropout, init_std=cfg.init_std,
                      block=cfg.sas_block)
    raise CoraError(f"unknown CF model '{cfg.model}' (choose from mf, lightgcn, sasrec)")
