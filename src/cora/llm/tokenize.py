"""Prompt texts -> token ids (once per split, cached) -> left-padded batches."""

from __future__ import annotations

import torch


def tokenize_prompts(tokenizer, texts: list[str], bos_token_id: int | None, max_length: int | None = None,
                     batch: int = 2048) -> list[list[int]]:
    """Token ids of each prompt, starting with the tokenizer's BOS (added here when the
    tokenizer does not add it itself). Long prompts are cut from the left so the question and
    the answer slot are always kept."""
    out: list[list[int]] = []
    for start in range(0, len(texts), batch):
        enc = tokenizer(texts[start:start + batch], add_special_tokens=False)["input_ids"]
        for ids in enc:
            if max_length is not None and len(ids) + 1 > max_length:
                ids = ids[len(ids) + 1 - max_length:]
            if bos_token_id is not None:
                ids = [bos_token_id] + ids
            out.append(list(ids))
    return out


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (batch, longest), padded on the left."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq):] = 1
    return ids, mask
