"""BinLLM (Zhang et al., ACL 2024): CF embeddings as binary codes written into the prompt as text.

Codes. BinLLM's reference learns a hashing layer ``sign(tanh(Linear(e)))`` per side (user / item)
on top of an MF model, trained with BCE on the dot product of the two codes, the sign passed
straight through in the backward pass. Here the CF model is a frozen run (MF, LightGCN or
SASRec) and only the hashing layers are learnt, once, on the train split (:func:`fit_binariser`):
``Linear(d_cf, n_bits)`` per side, straight-through sign, logit ``a <h_u, h_i> / n_bits + b``
(a learnt scale and bias keep the BCE well-posed; the reference's progressive mixing of real
and binary codes is left out). Bit = 1 where the projection is >= 0.

Text. ``n_bits`` '0'/'1' characters (default 32), or with ``binllm_dot_decimal`` each 8 bits as
one number 0-255 joined by '.' like an IPv4 address (BinLLM's "ipv4" compression). The codes
fill CoLLM's prompt slots (``... encoded in the feature 0110... with the feature 1001...``).

Training: LoRA only (r 8, alpha 16, dropout 0.05, q/v; the binariser is fitted before and saved
with the run). As BinLLM's reference, LoRA is first tuned on the text-only prompt (stage
``text``) and then further on the prompt with codes (stage ``codes``); ``binllm_text_stage:
false`` keeps only the second.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cora.cf.data import cf_embeddings
from cora.config import LLMConfig
from cora.data.prompts import COLLM_TEMPLATE, build_prompt
from cora.data.store import load_dataset
from cora.errors import CoraError
from cora.io import check_tensors
from cora.llm.backbone import Backbone
from cora.methods.base import LLMMethod
from cora.methods.lora import WithLoRA

BINARISER_EPOCHS = 20
BINARISER_LR = 1e-2
BINARISER_BATCH = 1024


# ----------------------------------------------------------------------------- codes <-> text
def bits_to_text(bits, dot_decimal: bool = False) -> str:
    """``[0, 1, ...]`` -> ``"01..."``, or ``"b1.b2..."`` (one number 0-255 per 8 bits, MSB first)."""
    bits = [int(b) for b in bits]
    if any(b not in (0, 1) for b in bits):
        raise CoraError("a binary code may only hold 0 and 1")
    if not dot_decimal:
        return "".join(map(str, bits))
    if len(bits) % 8:
        raise CoraError(f"dot-decimal codes need a multiple of 8 bits (got {len(bits)})")
    return ".".join(str(int("".join(map(str, bits[i:i + 8])), 2)) for i in range(0, len(bits), 8))


def text_to_bits(text: str, n_bits: int, dot_decimal: bool = False) -> list[int]:
    """Inverse of :func:`bits_to_text`."""
    if not dot_decimal:
        if len(text) != n_bits or set(text) - {"0", "1"}:
            raise CoraError(f"'{text}' is not a {n_bits}-bit binary code")
        return [int(c) for c in text]
    parts = text.split(".")
    if len(parts) * 8 != n_bits or not all(p.isdigit() and int(p) < 256 for p in parts):
        raise CoraError(f"'{text}' is not a {n_bits}-bit dot-decimal code")
    return [int(c) for p in parts for c in format(int(p), "08b")]


# ----------------------------------------------------------------------------- binariser
class Binariser(nn.Module):
    """Hashing layers: one ``Linear(d_cf, n_bits)`` per side; bit = projection >= 0."""

    def __init__(self, dim: int, n_bits: int):
        super().__init__()
        self.user = nn.Linear(dim, n_bits)
        self.item = nn.Linear(dim, n_bits)
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    @staticmethod
    def _sign(z: torch.Tensor) -> torch.Tensor:
        """+-1 forward, identity backward (straight-through estimator)."""
        hard = torch.where(z >= 0, 1.0, -1.0)
        return z + (hard - z).detach()

    def forward(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        h_u = self._sign(torch.tanh(self.user(user_emb)))
        h_i = self._sign(torch.tanh(self.item(item_emb)))
        return self.scale * (h_u * h_i).sum(-1) / h_u.shape[-1] + self.bias

    @torch.no_grad()
    def codes(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(user bits, item bits), uint8 0/1 of shape (n, n_bits)."""
        return (self.user(user_emb) >= 0).to(torch.uint8), (self.item(item_emb) >= 0).to(torch.uint8)


def fit_binariser(cf_model: nn.Module, train_df: pd.DataFrame, n_bits: int, seed: int = 0,
                  epochs: int = BINARISER_EPOCHS, lr: float = BINARISER_LR) -> Binariser:
    """Learn the hashing layers on the frozen CF model's embeddings of the train rows so that the
    codes' dot product predicts the labels (BCE). Small and fast: embeddings are computed once,
    then ``epochs`` passes of Adam over (n_rows, 2 * d_cf) floats, on the CPU."""
    if n_bits < 1:
        raise CoraError(f"binllm_bits must be at least 1 (got {n_bits})")
    user, item = cf_embeddings(cf_model, train_df)
    label = torch.tensor(train_df["label"].to_numpy(), dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Binariser(user.shape[1], n_bits)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(epochs):
            for rows in torch.randperm(len(label)).split(BINARISER_BATCH):
                loss = F.binary_cross_entropy_with_logits(model(user[rows], item[rows]), label[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return model.requires_grad_(False).eval()


# ----------------------------------------------------------------------------- method
class BinLLM(WithLoRA, LLMMethod):
    name = "binllm"
    uses_cf = True
    stage_names = ("text", "codes")  # "text" only with binllm_text_stage

    def __init__(self, backbone: Backbone, cfg: LLMConfig, cf_model):
        super().__init__(backbone, cfg, cf_model)
        if cfg.binllm_dot_decimal and cfg.binllm_bits % 8:
            raise CoraError(f"binllm_dot_decimal needs binllm_bits to be a multiple of 8 (got {cfg.binllm_bits})")
        self.add_lora(cfg)
        # Fitted on the first encode (or loaded with a run): frozen, but saved with the LoRA.
        self.binariser = Binariser(cf_model.dim, cfg.binllm_bits).requires_grad_(False)
        self.binariser_ready = False
        # Stages ("text", "codes"; see stages()) change only the prompt: LoRA trains in every one.

    def stages(self) -> tuple[str, ...]:
        return self.stage_names if self.cfg.binllm_text_stage else self.stage_names[1:]


    # ---------------------------------------------------------------- codes
    def ensure_binariser(self) -> None:
        """Fit the binariser on the dataset's whole train split unless a run's weights were loaded."""
        if not self.binariser_ready:
            train = load_dataset(self.cfg.data).split("train")
            fitted = fit_binariser(self.cf, train, self.cfg.binllm_bits, self.cfg.seed)
            self.binariser.load_state_dict(fitted.state_dict())
            self.binariser_ready = True

    def code_texts(self, df: pd.DataFrame) -> tuple[list[str], list[str]]:
        """The user and target-item code of every row, as prompt text."""
        self.ensure_binariser()
        user, item = cf_embeddings(self.cf, df)
        device = self.binariser.scale.device
        bits = torch.cat(self.binariser.codes(user.to(device), item.to(device))).cpu().numpy()
        unique, inverse = np.unique(bits, axis=0, return_inverse=True)  # one text per distinct code
        words = [bits_to_text(b, self.cfg.binllm_dot_decimal) for b in unique]
        texts = [words[k] for k in inverse.reshape(-1)]
        return texts[:len(df)], texts[len(df):]

    def prompt_texts(self, df: pd.DataFrame, domain: str) -> list[str]:
        if self.stage == "text":  # BinLLM's step 1: the text-only (TALLRec) prompt
            return super().prompt_texts(df, domain)
        users, items = self.code_texts(df)
        max_titles = 0 if self.cfg.no_titles else self.cfg.max_titles
        return [build_prompt(h, t, domain, max_titles, template=COLLM_TEMPLATE, id_only=self.cfg.id_only,
                             user_slot=u, item_slot=i)
                for h, t, u, i in zip(df["his_title"], df["title"], users, items)]

    # ---------------------------------------------------------------- checkpoints
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        state = super().trainable_state_dict()
        if self.binariser_ready:
            state.update({f"binariser.{k}": v.detach() for k, v in self.binariser.state_dict().items()})
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source="checkpoint") -> None:
        state = dict(state)
        mine = {k.removeprefix("binariser."): state.pop(k) for k in list(state) if k.startswith("binariser.")}
        super().load_trainable_state_dict(state, source)
        if mine:
            expected = {k: tuple(v.shape) for k, v in self.binariser.state_dict().items()}
            check_tensors(source, mine, expected, f"BinLLM's binariser with {self.cfg.binllm_bits} bits")
            self.binariser.load_state_dict(mine)
            self.binariser_ready = True
