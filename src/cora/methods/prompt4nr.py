"""Prompt4NR (Zhang and Wang 2023), extended to LLMs: a trainable continuous soft prompt.

``soft_tokens`` vectors (default 10) sit right after BOS, before the plain text prompt, in every
row; under left padding they stay right after each row's own BOS. Trainable: the soft prompt
(``soft_tokens x d_model``), plus a standard LoRA when ``prompt_lora`` is set. Frozen: the LLM.

The vectors start as the input embeddings of ``soft_tokens`` distinct vocabulary tokens drawn at
random (specials excluded; seeded by ``seed``), the usual initialisation for prompt tuning
(Lester et al. 2021): a start with the scale and statistics of real tokens trains far better
than random noise.

Note: the CoRA paper says it takes CoLLM's implementation, whose soft prompt is 3 vectors at a
user slot plus 3 at a target-item slot of a hybrid prompt, tuned jointly with LoRA (r 8, q/v).
Here the prompt text stays the one every method shares; ``prompt_lora`` adds the joint LoRA.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from cora.config import LLMConfig
from cora.errors import CoraError
from cora.llm.tokenize import tokenize_prompts
from cora.methods.base import EncodedSplit
from cora.methods.slots import SlotPromptMethod
from cora.methods.tallrec import WithLoRA


class Prompt4NR(WithLoRA, SlotPromptMethod):
    name = "prompt4nr"

    def __init__(self, backbone, cfg: LLMConfig):
        super().__init__(backbone, cfg)
        n = cfg.soft_tokens
        if n < 1:
            raise CoraError(f"--soft-tokens {n}: Prompt4NR needs at least 1 soft token")
        if cfg.max_length is not None and cfg.max_length < n + 2:
            raise CoraError(f"--max-length {cfg.max_length}: too short for {n} soft tokens")
        table = self.llm.get_input_embeddings().weight
        special = set(self.tokenizer.all_special_ids)
        vocab = [i for i in range(min(len(self.tokenizer), table.shape[0])) if i not in special]
        if len(vocab) < n:
            raise CoraError(f"--soft-tokens {n}: the vocabulary has only {len(vocab)} ordinary tokens")
        pick = torch.randperm(len(vocab), generator=torch.Generator().manual_seed(cfg.seed))[:n]
        ids = torch.tensor(vocab, dtype=torch.long)[pick].to(table.device)
        self.soft_prompt = nn.Parameter(table[ids].detach().float().clone())
        if cfg.prompt_lora:
            self.add_lora(cfg)

    def encode(self, df: pd.DataFrame, domain: str) -> EncodedSplit:
        n = self.cfg.soft_tokens
        budget = None if self.cfg.max_length is None else self.cfg.max_length - n  # long prompts: cut from the left
        texts = tokenize_prompts(self.tokenizer, self.prompt_texts(df, domain), None, budget)
        lead = [self.bos_token_id] if self.bos_token_id is not None else []
        ids = [lead + [self.pad_token_id] * n + t for t in texts]
        offsets = [[len(lead) + k - len(row) for k in range(n)] for row in ids]  # from the end: padding-proof
        return self.make_split(df, ids, slot_offsets=torch.tensor(offsets, dtype=torch.long).reshape(len(ids), n))

    def slot_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.soft_prompt.unsqueeze(0).expand(batch["input_ids"].shape[0], -1, -1)
