"""Prompt texts -> token ids (once per split, cached) -> padded batches (right-padded for scoring)."""

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


def right_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (batch, longest), padded on the right: every real token
    sits at its own position whatever else is in the batch, and no query row is fully masked
    (a pad attends to the real tokens before it). The score is read at each row's last real
    token (:func:`last_positions`)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, :len(seq)] = 1
    return ids, mask


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch,) index of each row's last real token in a right-padded batch."""
    return (attention_mask.sum(-1) - 1).clamp(min=0)


def slot_positions(offsets: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Where vector slots sit in a right-padded batch: ``offsets`` (batch, n_slots) are counted
    from the end of each row's own tokens (negative), so a slot is at ``length + offset``."""
    return offsets + attention_mask.sum(-1, keepdim=True)
