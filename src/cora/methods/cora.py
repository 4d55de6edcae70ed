"""CoRA: collaborative weights for a frozen LLM (AAAI 2025; DESIGN sec. 4).

Per (user, item) pair: ``e = [cf_user(u); cf_item(i)]`` -> query generator -> one unit-norm
``A(u, i)`` per adapted input width -> every adapted linear ``W`` acts as ``W + s (A B)^T`` for that
pair only. Trainable: the generator and the per-module ``B`` (zero-initialised, so step 0 is the
frozen LLM). Frozen: the LLM and the CF model. The prompt is the plain text prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cora.cf.data import cf_embeddings
from cora.config import LLMConfig
from cora.llm.backbone import Backbone
from cora.llm.lowrank import CollaborativeAdapter
from cora.methods.base import LLMMethod
from cora.methods.generator import CollaborativeQueryGenerator

# input_norm's choices are declared with the setting (cora.config.INPUT_NORMS); LLMConfig refuses
# others when it is built.


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
        if cfg.input_norm == "zscore":
            self._fit_input_stats()

    def train(self, mode: bool = True):
        super().train(mode)  # puts the frozen LLM, and so the wrapped modules, in eval mode
        self.adapter.train(mode)  # ... but the adapter's dropout follows training
        return self

    def pair_embedding(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():  # the CF model is frozen: no graph through it
            user = self.cf.user_embedding(batch).float()
            item = self.cf.item_embedding(batch["iid"]).float()
        # Opt-in, not in the paper (docs/method.md "Deviations"; scripts/generator_sensitivity.py): the
        # generator sees e only through one cross-attention value added to LayerNormed queries,
        # so e's spread decides how much the pair moves A. At init, A varies over pairs ~3x less
        # with LightGCN's vectors than with MF's (smaller, and half their norm a shared mean).
        if self.cfg.input_norm == "zscore":  # per dimension, with the training pairs' statistics
            return (torch.cat([user, item], dim=-1) - self.input_mean) / self.input_std
        if self.cfg.input_norm == "layernorm":  # per vector
            user = F.layer_norm(user, user.shape[-1:])
            item = F.layer_norm(item, item.shape[-1:])
        return torch.cat([user, item], dim=-1)

    def _fit_input_stats(self) -> None:
        """Mean and std of every dimension of e over the dataset's training rows: deterministic
        (a frozen CF model, all rows), so a loaded run recomputes exactly what it trained with."""
        from cora.data.store import load_dataset

        user, item = cf_embeddings(self.cf, load_dataset(self.cfg.data).split("train"))
        e = torch.cat([user, item], dim=-1)
        device = next(self.generator.parameters()).device
        self.register_buffer("input_mean", e.mean(0).to(device), persistent=False)
        self.register_buffer("input_std", e.std(0).clamp_min(1e-6).to(device), persistent=False)

    def collaborative_weights(self, batch: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        return self.generator(self.pair_embedding(batch))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # Under gradient checkpointing the backward pass runs each layer again, after this forward
        # has returned: the pair's A must still be in place then (until the next forward).
        hold = self.training and self.cfg.gradient_checkpointing
        with self.adapter.weights(self.collaborative_weights(batch), hold=hold):
            return self.score(batch)
