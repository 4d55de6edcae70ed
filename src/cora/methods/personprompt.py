"""PersonPrompt (Li, Zhang and Chen 2022): new trainable tokens for every user and every item.

Each user and each item gets its own input-embedding vector (tables ``n_users x d_model`` and
``n_items x d_model`` from the dataset's id ranges, indexed by id; row 0 is the unused padding
id), placed as one token in CoLLM's prompt: the user's at ``<UserID>``, the target item's at
``<TargetItemID>``. CoLLM's reference code runs PersonPrompt exactly so, with free ID embeddings
where CoLLM puts mapped CF embeddings, so PersonPrompt vs CoLLM isolates where the collaborative
vectors come from. Trainable: the two tables, plus a standard LoRA when ``prompt_lora`` is set
(off by default: CoLLM's reference config keeps its LoRA frozen, and the CoRA paper describes
PersonPrompt as new tokens only). Frozen: the LLM. Users / items never seen in training keep
their initial vectors.

The rows start as N(0, s) with ``s`` the standard deviation of the backbone's input embeddings,
so the new tokens have the scale of real tokens (seeded by ``seed``).
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from cora.config import LLMConfig
from cora.data.store import load_dataset
from cora.errors import CoraError
from cora.methods.base import EncodedSplit
from cora.methods.lora import WithLoRA
from cora.methods.slots import SlotPromptMethod, encode_id_slots


class PersonPrompt(WithLoRA, SlotPromptMethod):
    name = "personprompt"

    def __init__(self, backbone, cfg: LLMConfig, n_users: int | None = None, n_items: int | None = None):
        super().__init__(backbone, cfg)
        if n_users is None or n_items is None:
            meta = load_dataset(cfg.data)  # reads meta.json only: the id ranges size the tables
            n_users, n_items = meta.n_users, meta.n_items
        table = self.llm.get_input_embeddings().weight
        std = table.detach().float().std().item()
        g = torch.Generator().manual_seed(cfg.seed)
        self.user_tokens = nn.Parameter((torch.randn(n_users, table.shape[1], generator=g) * std).to(table.device))
        self.item_tokens = nn.Parameter((torch.randn(n_items, table.shape[1], generator=g) * std).to(table.device))
        if cfg.prompt_lora:
            self.add_lora(cfg)

    def encode(self, df: pd.DataFrame, domain: str) -> EncodedSplit:
        for col, rows, what in (("uid", len(self.user_tokens), "user"), ("iid", len(self.item_tokens), "item")):
            if len(df) and not (0 <= int(df[col].min()) and int(df[col].max()) < rows):
                raise CoraError(f"{what} ids up to {int(df[col].max())} do not fit PersonPrompt's {rows}-row "
                                f"{what} table: the data is not the dataset the method was built for")
        return encode_id_slots(self, df, domain)

    def slot_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([self.user_tokens[batch["uid"]], self.item_tokens[batch["iid"]]], dim=1)
