"""Prompt4NR (Zhang and Wang 2023), extended to LLMs: a trainable continuous soft prompt.

Two layouts (``soft_prompt``):

``slots`` (new runs: CoLLM's soft-prompt code, which the CoRA paper says it takes). CoLLM's
``softprompt.txt`` prompt::

    #Question: <UserID> <ItemTitleList> [SEP] <TargetItemID> <TargetItemTitle> [SEP] Using all
    available information, make a prediction about whether the user would enjoy the movie? ...

where each ID slot is ``soft_tokens`` (3) positions written as ``<unk>.<unk>.<unk>``, filled by
learned vectors: one ``Linear(2 -> d_model * 3, no bias)`` applied to a one-hot "which slot"
input, i.e. one (3, d_model) block for the user slot and one for the target-item slot, the same
for every user and item. Here that is a (2, soft_tokens, d_model) parameter with the Linear's
default init (U(-1/sqrt(2), 1/sqrt(2)), fan-in 2). The standard LoRA (r 8, alpha 16, q/v,
dropout 0.05) trains jointly (``prompt_lora``), lr 1e-4 (``LLM_DEFAULTS``).

``prefix`` (runs made before the option existed): ``soft_tokens`` vectors right after BOS on the
plain text prompt every method shares, started from the embeddings of random vocabulary tokens
(Lester et al. 2021); counted from each row's end, they stay right after its own BOS.

Frozen: the LLM.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch import nn

from cora.config import LLMConfig
from cora.data.prompts import SOFT_PROMPT_TEMPLATE, build_prompt
from cora.errors import CoraError
from cora.llm.slots import tokenize_with_slots
from cora.llm.tokenize import tokenize_prompts
from cora.methods.base import EncodedSplit
from cora.methods.lora import WithLoRA
from cora.methods.slots import SLOT_MARKER, SlotPromptMethod

# soft_prompt's choices are declared with the setting (cora.config.SOFT_PROMPTS); LLMConfig refuses
# others when it is built.


class Prompt4NR(WithLoRA, SlotPromptMethod):
    name = "prompt4nr"

    def __init__(self, backbone, cfg: LLMConfig):
        super().__init__(backbone, cfg)
        n = cfg.soft_tokens
        if cfg.max_length is not None and cfg.max_length < n + 2:
            raise CoraError(f"--max-length {cfg.max_length}: too short for {n} soft tokens")
        table = self.llm.get_input_embeddings().weight
        if cfg.soft_prompt == "slots":
            bound = 1 / math.sqrt(2)  # nn.Linear(2, ...)'s default init, as the reference's projection
            g = torch.Generator().manual_seed(cfg.seed)
            init = (torch.rand(2, n, table.shape[1], generator=g) * 2 - 1) * bound
            self.slot_prompt = nn.Parameter(init.to(table.device))
        else:
            self.soft_prompt = nn.Parameter(self._vocabulary_init(table, n, cfg.seed))
        if cfg.prompt_lora:
            self.add_lora(cfg)

    def _vocabulary_init(self, table: torch.Tensor, n: int, seed: int) -> torch.Tensor:
        special = set(self.tokenizer.all_special_ids)
        vocab = [i for i in range(min(len(self.tokenizer), table.shape[0])) if i not in special]
        if len(vocab) < n:
            raise CoraError(f"--soft-tokens {n}: the vocabulary has only {len(vocab)} ordinary tokens")
        pick = torch.randperm(len(vocab), generator=torch.Generator().manual_seed(seed))[:n]
        ids = torch.tensor(vocab, dtype=torch.long)[pick].to(table.device)
        return table[ids].detach().float().clone()

    def encode(self, df: pd.DataFrame, domain: str) -> EncodedSplit:
        return self._encode_slots(df, domain) if self.cfg.soft_prompt == "slots" else self._encode_prefix(df, domain)

    def _encode_slots(self, df: pd.DataFrame, domain: str) -> EncodedSplit:
        n = self.cfg.soft_tokens
        slot = ".".join([SLOT_MARKER] * n)  # the reference writes "<unk>.<unk>.<unk>" at each ID
        max_titles = 0 if self.cfg.no_titles else self.cfg.max_titles
        texts = [build_prompt(h, t, domain, max_titles, template=SOFT_PROMPT_TEMPLATE, id_only=self.cfg.id_only,
                              user_slot=slot,
                              item_slot=slot) for h, t in zip(df["his_title"], df["title"])]
        ids, slots = tokenize_with_slots(self.tokenizer, texts, SLOT_MARKER, 2 * n, self.bos_token_id,
                                         self.pad_token_id, self.cfg.max_length)
        return self.make_split(df, ids, slot_offsets=torch.tensor(slots, dtype=torch.long).reshape(-1, 2 * n))

    def _encode_prefix(self, df: pd.DataFrame, domain: str) -> EncodedSplit:
        n = self.cfg.soft_tokens
        budget = None if self.cfg.max_length is None else self.cfg.max_length - n  # long prompts: cut from the left
        texts = tokenize_prompts(self.tokenizer, self.prompt_texts(df, domain), None, budget)
        lead = [self.bos_token_id] if self.bos_token_id is not None else []
        ids = [lead + [self.pad_token_id] * n + t for t in texts]
        offsets = [[len(lead) + k - len(row) for k in range(n)] for row in ids]  # from the end: padding-proof
        return self.make_split(df, ids, slot_offsets=torch.tensor(offsets, dtype=torch.long).reshape(len(ids), n))

    def slot_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        vectors = self.slot_prompt.flatten(0, 1) if self.cfg.soft_prompt == "slots" else self.soft_prompt
        return vectors.unsqueeze(0).expand(batch["input_ids"].shape[0], -1, -1)
