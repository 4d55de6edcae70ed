"""Interaction tables -> CF tensors (uid, iid, label, left-padded history)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn


def pad_histories(his: pd.Series, max_len: int) -> torch.Tensor:
    """Last ``max_len`` ids of each history, left-padded with 0 (the SASRec input)."""
    out = np.zeros((len(his), max_len), dtype=np.int64)
    for row, h in enumerate(his):
        tail = [x for x in h if x != 0][-max_len:]
        if tail:
            out[row, max_len - len(tail):] = tail
    return torch.from_numpy(out)


def table_tensors(df: pd.DataFrame, max_len: int = 0) -> dict[str, torch.Tensor]:
    out = {
        "uid": torch.tensor(df["uid"].to_numpy(), dtype=torch.long),
        "iid": torch.tensor(df["iid"].to_numpy(), dtype=torch.long),
        "label": torch.tensor(df["label"].to_numpy(), dtype=torch.float32),
    }
    if max_len:
        out["his"] = pad_histories(df["his"], max_len)
    return out


def batches(tensors: dict[str, torch.Tensor], batch_size: int, shuffle: bool, generator: torch.Generator | None = None):
    n = len(tensors["uid"])
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield {k: v[idx] for k, v in tensors.items()}


@torch.no_grad()
def cf_embeddings(cf_model: nn.Module, df: pd.DataFrame, batch: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen CF model's (user, item) vectors of every row of ``df`` (SASRec: per row, from the
    row's history), fp32 on the CPU."""
    device = next(cf_model.parameters()).device
    uid = torch.tensor(df["uid"].to_numpy(), dtype=torch.long)
    iid = torch.tensor(df["iid"].to_numpy(), dtype=torch.long)
    his = pad_histories(df["his"], cf_model.max_len) if getattr(cf_model, "uses_history", False) else None
    users, items = [], []
    for s in range(0, len(df), batch):
        b = {"uid": uid[s:s + batch].to(device), "iid": iid[s:s + batch].to(device)}
        if his is not None:
            b["his"] = his[s:s + batch].to(device)
        users.append(cf_model.user_embedding(b).float().cpu())
        items.append(cf_model.item_embedding(b["iid"]).float().cpu())
    return torch.cat(users), torch.cat(items)
