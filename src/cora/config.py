"""Dataclass configs with a YAML round-trip. A run folder's ``config.yaml`` rebuilds the run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cora.errors import CoraError
from cora.io import read_yaml_mapping, write_yaml


class _YamlConfig:
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config"):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CoraError(f"{source}: unknown field(s) {', '.join(unknown)} for {cls.__name__}")
        return cls(**d)

    def differing_fields(self, other: "_YamlConfig", ignore=frozenset()) -> list[str]:
        """Fields (in declaration order, minus ``ignore``) whose values differ from ``other``'s:
        what stops a run from being resumed or reused under other settings."""
        theirs = other.to_dict()
        return [k for k, v in self.to_dict().items() if k not in ignore and theirs.get(k) != v]

    def save(self, path: str | Path) -> None:
        write_yaml(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path):
        return cls.from_dict(read_yaml_mapping(path, "config"), source=str(path))


# The paper's CF settings (DESIGN sec. 7): pointwise BCE, Adam + L2, dim 256, patience 20.
CF_DEFAULTS: dict[str, dict[str, Any]] = {
    # MF: N(0, 0.01) init. The reference keeps torch's N(0, 1), which needs patience ~100 and
    # hundreds of epochs to leave AUC 0.5; with patience 20 it often stops at epoch 0 (see README).
    "mf": {"lr": 1e-3, "weight_decay": 1e-4, "init_std": 0.01},
    "lightgcn": {"lr": 1e-2, "weight_decay": 1e-4, "init_std": 0.1},
    "sasrec": {"lr": 1e-2, "weight_decay": 1e-4, "init_std": 0.1, "sas_block": "reference"},
}


@dataclass
class CFConfig(_YamlConfig):
    model: str = "mf"
    data: str = ""
    dim: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 1024
    epochs: int = 1000
    patience: int = 20
    seed: int = 2023
    init_std: float = 0.1
    # LightGCN
    gcn_layers: int = 2
    # SASRec
    max_len: int = 25
    sas_blocks: int = 2
    sas_heads: int = 1
    sas_dropout: float = 0.2
    # SASRec block (cf/models.py): "reference" (the reference code's block; new runs, via
    # CF_DEFAULTS) or "preln" (textbook pre-LN; the value a config.yaml without this field means)
    sas_block: str = "preln"
    extra: dict = field(default_factory=dict)

    @classmethod
    def for_model(cls, model: str, **overrides) -> "CFConfig":
        model = model.lower()
        if model not in CF_DEFAULTS:
            raise CoraError(f"unknown CF model '{model}' (choose from {', '.join(CF_DEFAULTS)})")
        return cls(model=model, **{**CF_DEFAULTS[model], **overrides})


@dataclass
class LLMConfig(_YamlConfig):
    """One LLM run: data, method, backbone, adapter, generator and training-loop settings."""

    data: str = ""
    method: str = "cora"
    cf: str | None = None  # CF run folder (CoRA, CoLLM, BinLLM)
    backbone: str = "smollm2-135m"
    dtype: str = "fp32"
    device: str = "cpu"
    # prompt
    max_titles: int = 10
    no_titles: bool = False  # ID-only ablation: no history titles in the prompt
    max_length: int | None = None
    # Subtract the mean initial Yes logit on training prompts from every score (see
    # LLMMethod.logit_offset; a constant, so rankings and AUC are unchanged). False = raw logit.
    calibrate_logit: bool = True
    # CoRA adapter and generator (DESIGN sec. 4 / 7)
    modules: str = "qkvo"
    rank: int = 16
    alpha: float = 32.0
    lora_dropout: float = 0.05
    gen_queries: int = 4
    gen_layers: int | None = None  # None: 8 (paper) for d_model >= 2048, else 2 (small backbones)
    gen_heads: int = 8
    gen_ffn: int | None = None  # None: 3072 (paper) for d_model >= 2048, else 1024
    gen_dropout: float = 0.1
    # Standard LoRA of the baselines (TALLRec, CoLLM stage 1, BinLLM; peft), CoLLM's settings:
    # r 8, alpha 16, q and v projections; its dropout is lora_dropout above (0.05).
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: str = "qv"  # module letters, as --modules
    # CoLLM: a two-layer MLP maps CF embeddings to input embeddings (None: 10 x CF dim, as CoLLM)
    collm_mlp_hidden: int | None = None
    # BinLLM: CF embeddings binarised and written into the prompt as text
    binllm_bits: int = 32
    binllm_dot_decimal: bool = False  # each 8 bits as a number 0-255 joined by "." (BinLLM's "ipv4")
    binllm_text_stage: bool = True  # first tune LoRA on the text-only prompt (BinLLM's step 1)
    # Prompt4NR / PersonPrompt (methods/prompt4nr.py, personprompt.py)
    soft_tokens: int = 10  # Prompt4NR's soft-prompt length (the paper gives none; CoLLM's code: 3 + 3)
    prompt_lora: bool = False  # Prompt4NR / PersonPrompt also tune the standard LoRA above (CoLLM's soft prompt does)
    # loop (reference: AdamW, lr 1e-3, warm-up from 1e-5 over 200 steps, cosine to 8e-5)
    batch_size: int = 8
    # Length bucketing: shuffled rows are sorted by prompt length within windows of this many
    # batches, then the batches are shuffled; 0 or 1 = plain shuffled batches.
    bucket_window: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    warmup_start_lr: float = 1e-5
    warmup_steps: int = 200
    min_lr: float = 8e-5
    weight_decay: float = 1e-3
    max_steps: int = 2000
    eval_every: int = 100
    patience: int = 20
    selection_metric: str = "auc"
    limit_train: int | None = None
    limit_valid: int | None = None
    eval_batch_size: int = 16
    seed: int = 42
    extra: dict = field(default_factory=dict)

    def generator_size(self, d_model: int) -> tuple[int, int]:
        """(layers, ffn): the paper's generator for 7B-class backbones, a smaller one for small
        backbones so that a SmolLM2 checkpoint stays a few tens of MB."""
        big = d_model >= 2048
        return (self.gen_layers or (8 if big else 2), self.gen_ffn or (3072 if big else 1024))
