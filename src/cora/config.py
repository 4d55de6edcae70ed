"""Dataclass configs with a YAML round-trip. A run folder's ``config.yaml`` rebuilds the run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cora.errors import CoraError
from cora.io import read_yaml_mapping, write_yaml
from cora.ranges import check_fields


class _YamlConfig:
    def __post_init__(self) -> None:
        # Every way a config is built (flags, --config YAML, experiment rows, a run's config.yaml,
        # dataclasses.replace) checks its fields against cora.ranges: nonsense never reaches the work.
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k, v in check_fields(type(self).__name__, values, type(self).__name__).items():
            setattr(self, k, v)  # e.g. lr: 1 (an int in YAML) -> 1.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config"):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CoraError(f"{source}: unknown field(s) {', '.join(unknown)} for {cls.__name__}")
        return cls(**check_fields(cls.__name__, d, source))  # checked here too, to name the source

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
    # hundreds of epochs to leave AUC 0.5; with patience 20 it often stops at epoch 0 (docs/method.md, Deviations).
    "mf": {"lr": 1e-3, "weight_decay": 1e-4, "init_std": 0.01},
    "lightgcn": {"lr": 1e-2, "weight_decay": 1e-4, "init_std": 0.1},
    # SASRec: the reference pretraining (CoLLM's SASRec run): batch 10,240, torch's N(0, 1) init.
    "sasrec": {"lr": 1e-2, "weight_decay": 1e-4, "init_std": 1.0, "batch_size": 10240, "sas_block": "reference"},
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
    def for_model(cls, model: str, source: str = "CF config", **overrides) -> "CFConfig":
        model = model.lower() if isinstance(model, str) else model
        if model not in CF_DEFAULTS:
            raise CoraError(f"{source}: unknown CF model {model!r} (choose from {', '.join(CF_DEFAULTS)})")
        return cls.from_dict({"model": model, **CF_DEFAULTS[model], **overrides}, source=source)


@dataclass
class LLMConfig(_YamlConfig):
    """One LLM run: data, method, backbone, adapter, generator and training-loop settings."""

    data: str = ""
    method: str = "cora"
    cf: str | None = None  # CF run folder (CoRA, CoLLM, BinLLM)
    backbone: str = "smollm2-135m"
    dtype: str = "fp32"
    device: str = "cpu"
    # CUDA only: fp32 matrix products on TF32 tensor cores (10-bit mantissa inputs, fp32 sums and
    # weights): ~7x plain fp32's peak on an H200 by its datasheet, far closer to fp32 than bf16.
    # Off by default (torch's default); recorded in config.yaml. Ignored on a CPU.
    tf32: bool = False
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
    # Prompt4NR's soft prompt: "slots" (CoLLM's soft-prompt code: ``soft_tokens`` vectors at each of
    # the ``<UserID>`` / ``<TargetItemID>`` slots of its own prompt; new runs, via LLM_DEFAULTS) or
    # "prefix" (``soft_tokens`` vectors after BOS on the plain prompt; what a config.yaml without
    # this field means)
    soft_prompt: str = "prefix"
    # CoRA: optional normalisation of the pair embedding before the generator: "none" (the paper's),
    # "zscore" (each dimension standardised with its mean / std over the training pairs) or
    # "layernorm" (each of the user / item vectors to zero mean, unit variance over its dims).
    input_norm: str = "none"
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
    # Steps over which the cosine decays to min_lr, independent of max_steps: the reference's
    # max_epoch x iters_per_epoch (LLM_DEFAULTS), so the lr stays near its peak in any run that
    # stops earlier. None = max_steps (what a config.yaml without this field means).
    lr_horizon: int | None = None
    eval_every: int = 100
    # Also write the resume checkpoint between validations once this many minutes have passed since
    # the last one (0 = after every step): a CPU run whose validations are 40 minutes apart loses at
    # most this much to a kill. It changes no number of the run (resume is exact), so it is never
    # compared on resume (PLACEMENT_FIELDS).
    checkpoint_every_min: float = 10.0
    patience: int = 20
    selection_metric: str = "auc"
    limit_train: int | None = None
    limit_valid: int | None = None
    # The validation sample: at most this many rows of each drawn user (None = whole users), drawn
    # with valid_seed (None = seed, what a config.yaml without the field means). A fixed valid_seed
    # gives every row and every seed of an experiment the same validation rows.
    valid_per_user: int | None = None
    valid_seed: int | None = None
    eval_batch_size: int = 16
    seed: int = 42
    # Loop settings of one stage of a staged method that differ from the run's, e.g. BinLLM's
    # {codes: {lr: 1e-4, batch_size: 4}} (see for_stage).
    stage_settings: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @classmethod
    def for_method(cls, fields: dict, cf_model: str | None = None, source: str = "config") -> "LLMConfig":
        """``fields`` (a --config YAML, an experiment row, CLI flags) over the reference settings of
        their method (and CF model) from :data:`LLM_DEFAULTS`, over the dataclass defaults. A
        fully resolved run config.yaml holds every field, so the table changes nothing in it."""
        fields = check_fields(cls.__name__, fields, source)  # before method / cf are used as keys and paths
        method = fields.get("method", cls.method)
        if cf_model is None and fields.get("cf"):
            cf_model = cf_model_of(fields["cf"])
        return cls.from_dict({**method_defaults(method, cf_model), **fields}, source=source)

    def for_stage(self, stage: str) -> "LLMConfig":
        """This config with stage ``stage``'s own loop settings (``stage_settings``) applied."""
        own = self.stage_settings.get(stage) or {}
        if not isinstance(own, dict) or (bad := sorted(set(own) - STAGE_FIELDS)):
            raise CoraError(f"stage_settings.{stage}: only loop settings may differ by stage "
                            f"({', '.join(sorted(STAGE_FIELDS))}); got {bad if isinstance(own, dict) else own!r}")
        return dataclasses.replace(self, **own) if own else self

    def generator_size(self, d_model: int) -> tuple[int, int]:
        """(layers, ffn): the paper's generator for 7B-class backbones, a smaller one for small
        backbones so that a SmolLM2 checkpoint stays a few tens of MB."""
        big = d_model >= 2048
        return (self.gen_layers or (8 if big else 2), self.gen_ffn or (3072 if big else 1024))


# Where a run computes (and how often it saves), not what it computes: a run may resume, and an
# experiment may carry a committed training, on another device or matmul precision (the row's
# table records which it had) or with another checkpoint interval.
PLACEMENT_FIELDS = frozenset({"device", "tf32", "checkpoint_every_min"})

# Settings of every new run that differ from what an older config.yaml without the field means:
# a limited validation sample keeps at most 10 rows of each drawn user (DEFAULT_PER_USER).
NEW_RUN_DEFAULTS: dict[str, Any] = {"valid_per_user": 10}

# What ``stage_settings`` may set: the loop's settings, nothing that changes the method's parts.
STAGE_FIELDS = {"lr", "batch_size", "grad_accum", "warmup_start_lr", "warmup_steps", "min_lr", "weight_decay",
                "max_steps", "lr_horizon", "eval_every", "patience"}

# The reference implementations' settings for each LLM method (DESIGN sec. 7b; CoLLM's, BinLLM's and
# CoRA's training configs), applied by LLMConfig.for_method to every new run. Keyed by method, and
# "method/cf-model" where the CF model changes them; later keys override earlier ones. ``lr_horizon``
# is max_epoch x iters_per_epoch of the reference config. Deviations from these are listed in docs/method.md.
LLM_DEFAULTS: dict[str, dict[str, Any]] = {
    # CoRA-MF: r 16, alpha 32, batch 8, lr 1e-3; 100 iters per "epoch" x max_epoch 1000.
    "cora": {"rank": 16, "alpha": 32.0, "batch_size": 8, "lr": 1e-3, "lr_horizon": 100_000},
    # CoRA-LGCN / CoRA-SAS: r 64, alpha 128, batch 16; 50 iters x max_epoch 200.
    "cora/lightgcn": {"rank": 64, "alpha": 128.0, "batch_size": 16, "lr_horizon": 10_000},
    "cora/sasrec": {"rank": 64, "alpha": 128.0, "batch_size": 16, "lr_horizon": 10_000},
    "icl": {},
    # TALLRec = CoLLM's stage 1 (collm_pretrain_mf_ood.yaml): batch 16, lr 1e-3, 50 x 200.
    "tallrec": {"batch_size": 16, "lr": 1e-3, "lr_horizon": 10_000},
    # CoLLM stage 2 (collm_pretrain_*_ood_cc.yaml): the same loop settings.
    "collm": {"batch_size": 16, "lr": 1e-3, "lr_horizon": 10_000},
    # CoLLM's soft prompt (soft_prompt_ood.yaml): 3 vectors per ID slot, LoRA r 8 q/v jointly,
    # lr 1e-4, batch 16, 50 iters x max_epoch 1000.
    "prompt4nr": {"soft_prompt": "slots", "soft_tokens": 3, "prompt_lora": True, "lr": 1e-4, "batch_size": 16,
                  "lr_horizon": 50_000},
    # personlized_prompt_ood_cc.yaml: lr 1e-2, batch 16, 50 x 1000, LoRA frozen (so: none).
    "personprompt": {"lr": 1e-2, "batch_size": 16, "lr_horizon": 50_000},
    # BinLLM: step 1 is TALLRec; step 2 (the prompt with codes) lr 1e-4, batch 4.
    "binllm": {"batch_size": 16, "lr": 1e-3, "lr_horizon": 10_000,
               "stage_settings": {"codes": {"lr": 1e-4, "batch_size": 4}}},
}


def method_defaults(method: str, cf_model: str | None = None) -> dict[str, Any]:
    """The reference settings of ``method`` fed by ``cf_model`` (an unknown method gets none:
    method_class names the error when the run is built)."""
    out = dict(NEW_RUN_DEFAULTS, **LLM_DEFAULTS.get(method, {}))
    if cf_model:
        out.update(LLM_DEFAULTS.get(f"{method}/{cf_model}", {}))
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in out.items()}


def cf_model_of(run: str | Path) -> str | None:
    """The CF model ('mf', 'lightgcn', 'sasrec') of a CF run folder; None where it has no config yet."""
    path = Path(run) / "config.yaml"
    return read_yaml_mapping(path, "CF run config").get("model") if path.exists() else None
