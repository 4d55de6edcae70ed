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

    def __init__(self, n_users: int, n_items: int, dim: int = 256, init_std: float = 0.1):
        super().__init__(n_users, n_items, dim)
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
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


class SASRec(CFModel):
    """SASRec: a causal pre-LN transformer over the user's earlier positive items.

    The user vector is the output at the last position of the left-padded history (the last
    ``max_len`` ids of ``his``); items share the input embedding table.
    """

    name = "sasrec"
    uses_history = True

    def __init__(self, n_users: int, n_items: int, dim: int = 256, max_len: int = 25, n_blocks: int = 2,
                 n_heads: int = 1, dropout: float = 0.2, init_std: float = 0.1):
        super().__init__(n_users, n_items, dim)
        self.max_len = max_len
        self.item = nn.Embedding(n_items, dim, padding_idx=0)
        self.pos = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, n_heads, dim_feedforward=dim, dropout=dropout, activation="relu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_blocks, enable_nested_tensor=False)
        self.last_norm = nn.LayerNorm(dim)
        nn.init.normal_(self.item.weight, std=init_std)
        with torch.no_grad():
            self.item.weight[0].zero_()
        causal = torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)

    def user_embedding(self, batch):
        seq = batch["his"][:, -self.max_len:]
        pad = seq == 0
        x = self.item(seq) * (self.dim ** 0.5) + self.pos.weight[-seq.shape[1]:]
        x = self.drop(x) * (~pad).unsqueeze(-1)
        # Left padding: a row that is all padding would give NaN attention; let it see itself.
        key_pad = pad.clone()
        key_pad[:, -1] = False
        x = self.encoder(x, mask=self.causal[-seq.shape[1]:, -seq.shape[1]:], src_key_padding_mask=key_pad)
        return self.last_norm(x[:, -1])

    def item_embedding(self, iid):
        return self.item(iid)


def build_cf_model(cfg, n_users: int, n_items: int) -> CFModel:
    """Instantiate the model named by a :class:`cora.config.CFConfig`."""
    if cfg.model == "mf":
        return MatrixFactorization(n_users, n_items, cfg.dim, init_std=cfg.init_std)
    if cfg.model == "lightgcn":
        return LightGCN(n_users, n_items, cfg.dim, n_layers=cfg.gcn_layers, init_std=cfg.init_std)
    if cfg.model == "sasrec":
        return SASRec(n_users, n_items, cfg.dim, max_len=cfg.max_len, n_blocks=cfg.sas_blocks,
                      n_heads=cfg.sas_heads, dropout=cfg.sas_dropout, init_std=cfg.init_std)
    raise CoraError(f"unknown CF model '{cfg.model}' (choose from mf, lightgcn, sasrec)")
