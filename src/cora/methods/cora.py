"""CoRA: collaborative weights for a frozen LLM (AAAI 2025; DESIGN sec. 4).

Per (user, item) pair: ``e = [cf_user(u); cf_item(i)]`` -> query generator -> one unit-norm
``A(u, i)`` per adapted input width -> every adapted linear ``W`` acts as ``W + s (A B)^T`` for that
pair only. Trainable: the generator and the per-module ``B`` (zero-initialised, so step 0 is the
frozen LLM). Frozen: the LLM and the CF model. The prompt is the plain text prompt.
"""

from __future__ import annotations

import torch

from cora.config import LLMConfig
from cora.llm.backbone import Backbone
from cora.llm.lowrank import CollaborativeAdapter
from cora.methods.base import LLMMethod
from cora.methods.generator import CollaborativeQueryGenerator


class CoRA(LLMMethod):
    name = "cora"
    uses_cf = True

    def __init__(self, backbone: Backbone, cfg: LLMConfig, cf_model):
        super().__init__(backbone, cfg, cf_model)
        self.adapter = CollaborativeAdapter(self.llm, cfg.modules, cfg.rank, cfg.alpha, cfg.lora_dropout)
        layers, ffn = cfg.generator_size(backbone.d_model)
        self.generator = CollaborativeQueryGenerator(
            input_dim=2 * cf_model.dim, widths=self.adapter.input_widths, rank=cfg.rank,
            hidden=2 * cf_model.dim, n_queries=cfg.gen_queries, n_layers=layers, n_heads=cfg.gen_heads,
            ffn=ffn, dropout=cfg.gen_dropout)

    def train(self, mode: bool = True):
        super().train(mode)  # puts the frozen LLM, and so the wrapped modules, in eval mode
        self.adapter.train(mode)  # ... but the adapter's dropout follows training
        return self

    def pair_embedding(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():  # the CF model is frozen: no graph through it
            user = self.cf.user_embedding(batch)
            item = self.cf.item_embedding(batch["iid"])
        return torch.cat([user, item], dim=-1).float()

    def collaborative_weights(self, batch: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        return self.generator(self.pair_embedding(batch))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.adapter.weights(self.collaborative_weights(batch)):
            return self.score(batch)
