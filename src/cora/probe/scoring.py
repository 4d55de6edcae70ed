"""Multiple-choice scoring: each choice's total log-likelihood as a continuation of the prompt.

For question q with prompt tokens p (after BOS) and choice tokens c_1..c_L the score is
``sum_j log softmax(model(BOS, p, c_<j))[c_j]``; the choice with the highest score is the model's
answer (lm-eval-harness' "acc", not length-normalised: the year and genre choices are alike in
length, and the matching task lists its options in the prompt, so a long title is as easy to copy
as a short one).

Prompt and choice are tokenised apart and concatenated, so every choice of a question shares the
prompt's tokens exactly, whatever merges a tokenizer would make across the boundary.
Sequences are sorted by length (less padding) in an order fixed by the questions alone, so every
model sees the very same batches: two models with the same weights give bit-identical scores.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Sequence

import numpy as np
import torch

from cora.errors import CoraError
from cora.llm.scoring import position_ids_for
from cora.llm.tokenize import left_pad, tokenize_prompts
from cora.probe.questions import Question

# Called with a batch's size before its forward pass: CoRA's pair weights must match the batch.
BatchContext = Callable[[int], ContextManager]


def encode(tokenizer, bos_token_id: int | None, questions: Sequence[Question]) -> list[tuple[int, int, list[int], int]]:
    """(question, choice, token ids of prompt + choice, number of choice tokens) per choice."""
    prompts = tokenize_prompts(tokenizer, [q.prompt for q in questions], bos_token_id)
    texts = [c for q in questions for c in q.choices]
    conts = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out, k = [], 0
    for qi, (q, prompt) in enumerate(zip(questions, prompts)):
        for ci in range(len(q.choices)):
            cont = list(conts[k])
            k += 1
            if not cont:
                raise CoraError(f"probe question on item {q.iid}: choice {q.choices[ci]!r} has no tokens")
            out.append((qi, ci, prompt + cont, len(cont)))
    return out


@torch.no_grad()
def choice_logliks(model, tokenizer, bos_token_id: int | None, questions: Sequence[Question], batch_size: int = 16,
                   context: BatchContext | None = None) -> np.ndarray:
    """(questions, choices) float64 total log-likelihood of each choice given its prompt."""
    seqs = encode(tokenizer, bos_token_id, questions)
    width = max((len(q.choices) for q in questions), default=0)
    out = np.full((len(questions), width), -np.inf)
    order = sorted(range(len(seqs)), key=lambda k: len(seqs[k][2]))  # stable: ties keep question order
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        rows = [seqs[k] for k in order[start:start + batch_size]]
        ids, mask = left_pad([r[2] for r in rows], pad)
        lengths = torch.tensor([r[3] for r in rows])
        total = _continuation_logprob(model, ids.to(device), mask.to(device), lengths.to(device), context)
        for (qi, ci, _, _), value in zip(rows, total.tolist()):
            out[qi, ci] = value
    return out


def _continuation_logprob(model, ids: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor,
                          context: BatchContext | None) -> torch.Tensor:
    """Sum of log-probabilities of each row's last ``lengths[b]`` tokens (rows are left-padded, so
    every continuation ends at the last position)."""
    k = int(lengths.max())
    with context(ids.shape[0]) if context else contextlib.nullcontext():
        # Only the last k + 1 positions' logits: the full-vocabulary projection of the prompt
        # positions would be wasted; the model's own head (soft-capping included) is applied.
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask), use_cache=False,
                       logits_to_keep=k + 1).logits
    logp = logits[:, :k].float().log_softmax(-1)  # position j of the window predicts token -k + j
    token_lp = logp.gather(-1, ids[:, -k:].unsqueeze(-1)).squeeze(-1).double()
    inside = torch.arange(k, device=ids.device).unsqueeze(0) >= (k - lengths).unsqueeze(1)
    return torch.where(inside, token_lp, torch.zeros_like(token_lp)).sum(-1)


def predictions(logliks: np.ndarray) -> np.ndarray:
    """The chosen choice per question (the first of exact ties)."""
    return logliks.argmax(axis=1)
