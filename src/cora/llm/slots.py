"""Embedding slots in a tokenised prompt: positions that receive a vector instead of a token's
embedding (CoLLM's ``<UserID>`` / ``<TargetItemID>``, PersonPrompt's ID tokens).

A prompt marks each slot with a marker string. The whole prompt is tokenised at once (so the text
around a slot tokenises as it would without slots), then the tokens that overlap a marker are
replaced by ONE slot position, whatever number of pieces the tokenizer cut the marker into. A
token that reaches across a marker's edge (e.g. ``|>.`` merged with the full stop after it) has
its outside part tokenised on its own, so no prompt text is lost; whitespace next to a marker
goes with the slot. This needs the character offsets of a "fast" tokenizer, which every Hugging
Face backbone we load has.

Slot positions are returned counted from the end of the prompt (negative): a slot sits at
``length + offset`` of its row whatever the padding (:func:`cora.llm.tokenize.slot_positions`).
"""

from __future__ import annotations

import re

from cora.errors import CoraError


def tokenize_with_slots(tokenizer, texts: list[str], marker: str, n_slots: int, bos_token_id: int | None,
                        slot_token_id: int, max_length: int | None = None,
                        batch: int = 2048) -> tuple[list[list[int]], list[list[int]]]:
    """(token ids, slot offsets from the end) of each prompt. Like ``tokenize_prompts``: BOS is
    prepended and a prompt longer than ``max_length`` is cut from the left (an error if that
    would cut a slot). Each slot holds ``slot_token_id`` (its embedding is replaced anyway)."""
    if not getattr(tokenizer, "is_fast", False):
        raise CoraError("this backbone's tokenizer gives no character offsets (not a 'fast' tokenizer); "
                        "embedding slots need one")
    ids_out: list[list[int]] = []
    slots_out: list[list[int]] = []
    pattern = re.compile(re.escape(marker))
    for start in range(0, len(texts), batch):
        chunk = texts[start:start + batch]
        enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
        for row, (text, ids, offsets) in enumerate(zip(chunk, enc["input_ids"], enc["offset_mapping"])):
            spans = [m.span() for m in pattern.finditer(text)]
            if len(spans) != n_slots:
                raise CoraError(f"prompt {start + row} has {len(spans)} slot marker(s) {marker!r}, expected "
                                f"{n_slots} (does a title contain the marker?)")
            out, slots = _replace_markers(tokenizer, text, ids, offsets, spans, slot_token_id)
            if len(slots) != n_slots:
                raise CoraError(f"prompt {start + row}: the tokenizer gave no token for a slot marker {marker!r}")
            if max_length is not None and len(out) + 1 > max_length:
                cut = len(out) + 1 - max_length
                if slots[0] < cut:
                    raise CoraError(f"max_length {max_length} would cut a collaborative slot out of prompt "
                                    f"{start + row}; raise max_length or lower max_titles")
                out, slots = out[cut:], [p - cut for p in slots]
            if bos_token_id is not None:
                out, slots = [bos_token_id] + out, [p + 1 for p in slots]
            ids_out.append(out)
            slots_out.append([p - len(out) for p in slots])
    return ids_out, slots_out


def _replace_markers(tokenizer, text, ids, offsets, spans, slot_token_id) -> tuple[list[int], list[int]]:
    def outside(part: str) -> list[int]:  # the part of an edge token that is not marker
        return tokenizer(part, add_special_tokens=False)["input_ids"] if part.strip() else []

    out: list[int] = []
    slots: list[int] = []
    for tok, (s, e) in zip(ids, offsets):
        hit = next((k for k, (a, b) in enumerate(spans) if s < b and e > a), None)
        if hit is None:
            out.append(tok)
            continue
        a, b = spans[hit]
        out += outside(text[s:a])
        if hit == len(slots):  # the first token of a marker becomes its slot, the others go
            slots.append(len(out))
            out.append(slot_token_id)
        out += outside(text[b:e])
    return out, slots
