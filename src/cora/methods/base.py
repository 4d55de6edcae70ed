"""What every LLM method shares: prompts -> cached token ids -> batches -> Yes logits.

A method says what is trainable and how a batch becomes logits; the one training loop in
``cora.train`` does the rest. Subclasses set ``name`` and override :meth:`forward` (and
:meth:`prompt_texts` when their prompt differs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from cora.cf.data import pad_histories
from cora.config import LLMConfig
from cora.data.prompts import build_prompt
from cora.io import check_tensors
from cora.llm.backbone import Backbone, set_gradient_checkpointing
from cora.llm.scoring import yes_logits
from cora.llm.tokenize import right_pad, tokenize_prompts


@dataclass
class EncodedSplit(torch.utils.data.Dataset):
    """A split with its prompts tokenised once; items are row indices, batches come from collate."""

    input_ids: list[list[int]]
    uid: torch.Tensor
    iid: torch.Tensor
    label: torch.Tensor
    his: torch.Tensor | None
    frame: pd.DataFrame  # uid, iid, label, not_cold: the columns predictions keep
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # row-aligned; collate passes them on

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> int:
        return i

    def subset(self, rows) -> EncodedSplit:
        """The given rows (indices into this split), in that order, every field kept aligned."""
        rows = np.asarray(rows, dtype=np.int64)
        return EncodedSplit(input_ids=[self.input_ids[r] for r in rows], uid=self.uid[rows], iid=self.iid[rows],
                            label=self.label[rows], his=None if self.his is None else self.his[rows],
                            frame=self.frame.iloc[rows].reset_index(drop=True),
                            extra={k: v[rows] for k, v in self.extra.items()})

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


class LLMMethod(nn.Module):
    name: ClassVar[str] = "base"
    uses_cf: ClassVar[bool] = False  # the constructor also gets the frozen CF model; a run needs --cf
    # Every stage a method trained in stages may run (stages() picks from them, in this order); () = one.
    stage_names: ClassVar[tuple[str, ...]] = ()
    stage: str | None = None  # the stage being trained (begin_stage); None = the finished method

    def __init__(self, backbone: Backbone, cfg: LLMConfig, cf_model: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.llm = backbone.model
        self.tokenizer = backbone.tokenizer
        self.yes_token_id = backbone.yes_token_id
        self.bos_token_id = backbone.bos_token_id
        self.pad_token_id = backbone.tokenizer.pad_token_id
        self.cf = cf_model
        # The backbone's decoder-layer classes: what FSDP shards as one unit each when the launch's
        # config names none (accelerate reads the attribute of the model it prepares: this one).
        self._no_split_modules = list(getattr(self.llm, "_no_split_modules", None) or [])
        # A constant subtracted from every Yes logit (0 = the raw logit). The raw Yes logit of an
        # instruction-tuned LLM sits far from 0 (SmolLM2: about +14), so BCE starts near 7 and a
        # short budget is spent shifting all scores instead of ranking them. The loop sets it
        # once, to the mean initial logit on training prompts (cfg.calibrate_logit); a constant
        # changes no AUC. Saved with the trainable tensors, never trained.
        self.register_buffer("logit_offset", torch.zeros(()), persistent=False)
        # Frozen parts stay in eval mode (no dropout) whatever mode the method is in.
        self.llm.requires_grad_(False)
        if cf_model is not None:
            cf_model.requires_grad_(False)

    # ---------------------------------------------------------------- data
    def prompt_texts(self, df: pd.DataFrame, domain: str) -> list[str]:
        max_titles = 0 if self.cfg.no_titles else self.cfg.max_titles
        return [build_prompt(h, t, domain, max_titles, id_only=self.cfg.id_only) for h, t in zip(df["his_title"], df["title"])]

    def encode(self, df: pd.DataFrame, domain: str) -> EncodedSplit:
        ids = tokenize_prompts(self.tokenizer, self.prompt_texts(df, domain), self.bos_token_id, self.cfg.max_length)
        return self.make_split(df, ids)

    def make_split(self, df: pd.DataFrame, input_ids: list[list[int]], **extra: torch.Tensor) -> EncodedSplit:
        """The split of ``df`` with its prompts' token ids; ``extra`` row-aligned tensors (e.g. where
        CoLLM's embedding slots sit) reach every batch under their own names."""
        his = pad_histories(df["his"], self.cf.max_len) if getattr(self.cf, "uses_history", False) else None
        return EncodedSplit(
            input_ids=input_ids,
            uid=torch.tensor(df["uid"].to_numpy(), dtype=torch.long),
            iid=torch.tensor(df["iid"].to_numpy(), dtype=torch.long),
            label=torch.tensor(df["label"].to_numpy(), dtype=torch.float32),
            his=his,
            frame=df[["uid", "iid", "label", "not_cold"]].reset_index(drop=True),
            extra=extra,
        )

    def collate(self, split: EncodedSplit, rows: list[int]) -> dict[str, torch.Tensor]:
        input_ids, mask = right_pad([split.input_ids[r] for r in rows], self.pad_token_id)
        idx = torch.as_tensor(rows, dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": mask, "uid": split.uid[idx], "iid": split.iid[idx],
                 "label": split.label[idx], "row": idx}
        if split.his is not None:
            batch["his"] = split.his[idx]
        batch.update({k: v[idx] for k, v in split.extra.items()})
        return batch

    # ---------------------------------------------------------------- stages
    def stages(self) -> tuple[str, ...]:
        """Training stages, run in order by ``train_run`` through the one loop, each from the best
        weights of the stages before it (CoLLM: LoRA, then the mapping). Most methods have one."""
        return ("train",)

    def begin_stage(self, name: str | None) -> None:
        """Make trainable what stage ``name`` trains (and switch to its prompt, if it has its own).
        ``None`` is the finished method: every tensor some stage trains and the final prompt; a
        method is built in that state, which is what checkpoints hold and ``load_run`` restores.
        Methods with stages extend this after calling it."""
        if name not in (None, *self.stages()):
            from cora.errors import CoraError

            raise CoraError(f"method '{self.name}' has no stage '{name}' (stages: {', '.join(self.stages())})")
        self.stage = name

    # ---------------------------------------------------------------- model
    def train(self, mode: bool = True):
        super().train(mode)
        self.llm.eval()
        if self.cfg.gradient_checkpointing:
            set_gradient_checkpointing(self.llm, mode)
        if self.cf is not None:
            self.cf.eval()
        return self

    def score(self, batch: dict[str, torch.Tensor], inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if inputs_embeds is not None:
            logit = yes_logits(self.llm, self.yes_token_id, batch["attention_mask"], inputs_embeds=inputs_embeds)
        else:
            logit = yes_logits(self.llm, self.yes_token_id, batch["attention_mask"], input_ids=batch["input_ids"])
        return logit - self.logit_offset

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.score(batch)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        state = {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
        state["logit_offset"] = self.logit_offset.detach().clone()
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str | Path = "checkpoint") -> None:
        """Load tensors saved by :meth:`trainable_state_dict`; names and shapes must match this
        method exactly (else one line naming ``source`` and the first tensor that differs)."""
        state = dict(state)
        offset = state.pop("logit_offset", None)
        params = dict(self.named_parameters())
        expected = {n: tuple(p.shape) for n, p in params.items() if p.requires_grad}
        check_tensors(source, state, expected, f"method '{self.name}' with these settings")
        if offset is not None:
            self.logit_offset.copy_(offset)
        with torch.no_grad():
            for n, t in state.items():
                params[n].copy_(t)
