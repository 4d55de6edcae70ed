"""Interaction tables -> CF tensors (uid, iid, label, left-padded history)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch


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
