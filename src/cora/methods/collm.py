"""CoLLM (Zhang et al. 2023): CF embeddings mapped into the LLM's input space as prompt tokens.

The prompt (CoLLM's ``collm_movie.txt`` / ``collm_amazon.txt``) has two slots, ``<UserID>`` and
``<TargetItemID>``; each becomes ONE input position whose embedding is
``mapping(cf_user(u))`` / ``mapping(cf_item(i))``, with CoLLM's mapping
``Linear(d_cf, 10 d_cf) - ReLU - Linear(10 d_cf, d_model)`` (``proj_mid_times`` 10, one token per
ID, no dropout), shared by users and items. The CF model (MF, LightGCN or SASRec run) is frozen.

Two stages, as CoLLM's reference trains it, from one ``train_run``:

1. ``lora``: TALLRec-style LoRA (r 8, alpha 16, dropout 0.05, q/v) on the text-only TALLRec
   prompt (our ``TEMPLATE``, = CoLLM's ``tallrec_movie.txt``): no CF slots at all, as CoLLM's
   stage 1 (``freeze_proj``, prompt without ID fields).
2. ``mapping``: only the mapping trains, on the CoLLM prompt, with the LoRA of stage 1 frozen
   (its dropout off too: a frozen part stays in eval mode).

The finished method (and every scoring after training) uses the CoLLM prompt.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from cora.config import LLMConfig
from cora.llm.backbone import Backbone
from cora.methods.base import EncodedSplit
from cora.methods.lora import WithLoRA
from cora.methods.slots import SlotPromptMethod, encode_id_slots

MLP_WIDTH_TIMES = 10  # CoLLM's proj_mid_times


class CoLLM(WithLoRA, SlotPromptMethod):
    name = "collm"
    uses_cf = True
    stage_names = ("lora", "mapping")

    def __init__(self, backbone: Backbone, cfg: LLMConfig, cf_model):
        super().__init__(backbone, cfg, cf_model)
        self.add_lora(cfg)
        hidden = cfg.collm_mlp_hidden or MLP_WIDTH_TIMES * cf_model.dim
        self.mapping = nn.Sequential(nn.Linear(cf_model.dim, hidden), nn.ReLU(), nn.Linear(hidden, backbone.d_model))
        self.mapping.to(backbone.device)
        self.begin_stage(None)

    # ---------------------------------------------------------------- stages
    def stages(self) -> tuple[str, ...]:
        return self.stage_names

    def begin_stage(self, name: str | None) -> None:
        super().begin_stage(name)
        for layer in self._lora_layers:
            for p in [*layer.lora_A.parameters(), *layer.lora_B.parameters()]:
                p.requires_grad_(name in (None, "lora"))
        self.mapping.requires_grad_(name in (None, "mapping"))
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for layer in self._lora_layers:  # LoRA dropout only while LoRA trains
            layer.lora_dropout.train(mode and self.stage == "lora")
        return self

    # ---------------------------------------------------------------- data
    def encode(self, df: pd.DataFrame, domain: str) -> EncodedSplit:
        if self.stage == "lora":  # stage 1 is TALLRec: the plain text prompt, no slots
            return super().encode(df, domain)
        return encode_id_slots(self, df, domain)

    # ---------------------------------------------------------------- model
    def slot_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch, 2, d_model): the mapped CF user and item embeddings, in the slots' order."""
        with torch.no_grad():  # the CF model is frozen: no graph through it
            cf = torch.stack([self.cf.user_embedding(batch), self.cf.item_embedding(batch["iid"])], dim=1)
        return self.mapping(cf.float())

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "slot_offsets" not in batch:  # a text-only batch (stage 1)
            return self.score(batch)
        return super().forward(batch)
