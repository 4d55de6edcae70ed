"""Dataclass configs with a YAML round-trip. A run folder's ``config.yaml`` rebuilds the run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cora import layout
from cora.errors import CoraError
from cora.io import read_yaml_mapping, write_yaml
from cora.methods import METHOD_NAMES
from cora.ranges import (
    SEED_MAX,
    Choice,
    Float,
    Int,
    Spec,
    check_fields,
    declare,
    fields_of_kind,
    setting,
)


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

    def differing_fields(self, other: _YamlConfig, ignore=frozenset()) -> list[str]:
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

# Choices of settings, spelled here once; the modules that implement them import them from here
# (so configs are checked without importing torch).
CF_MODELS = tuple(CF_DEFAULTS)
SAS_BLOCKS = ("reference", "preln")  # cora.cf.models.SASRec
DTYPES = ("fp32", "bf16", "fp16")  # cora.llm.backbone maps each to a torch dtype
ATTENTION_KERNELS = ("sdpa", "eager")  # cora.llm.backbone.ATTENTION
MODULE_LETTERS = "qkvof"  # cora.llm.lowrank.MODULE_LETTERS maps each to projection names
INPUT_NORMS = ("none", "zscore", "layernorm")  # cora.methods.cora
SOFT_PROMPTS = ("slots", "prefix")  # cora.methods.prompt4nr
SELECTION_METRICS = ("auc", "uauc")  # cora.train.loop.selection_score

# Settings with the same name mean the same thing in CFConfig and LLMConfig.
_SEED = Int(0, SEED_MAX)
_LR = Float(0, 1, lo_open=True)
_DROPOUT = Float(0, 1, hi_open=True)  # 1 would drop everything
_FRACTION = Float(0, 1)
_POSITIVE = Int(1)
_STR, _OPT_STR, _BOOL, _DICT = Spec(str), Spec(str, optional=True), Spec(bool), Spec(dict)


@declare
@dataclass
class CFConfig(_YamlConfig):
    """One CF run (MF, LightGCN, SASRec). Per-model defaults: :data:`CF_DEFAULTS`."""

    model: str = setting("mf", Choice(*CF_MODELS), "CF model: " + " | ".join(CF_MODELS) + ".")
    data: str = setting("", _STR, "Dataset folder.")
    dim: int = setting(256, _POSITIVE, "Embedding size.")
    lr: float = setting(1e-3, _LR, "Learning rate (Adam).")
    weight_decay: float = setting(1e-4, _FRACTION, "L2 weight decay.", flag="--wd")
    batch_size: int = setting(1024, _POSITIVE, "Batch size.")
    epochs: int = setting(1000, _POSITIVE, "Maximum epochs.")
    patience: int = setting(20, _POSITIVE, "Stop after this many epochs without valid-AUC gain.")
    seed: int = setting(2023, _SEED, "Random seed.")
    init_std: float = setting(0.1, Float(0, lo_open=True), "Std of the normal initialisation of the embeddings.")
    # LightGCN; 0 layers: the embeddings as they are (plain MF)
    gcn_layers: int = setting(2, Int(0), "LightGCN: propagation layers.")
    # SASRec
    max_len: int = setting(25, _POSITIVE, "SASRec: history length.")
    sas_blocks: int = setting(2, _POSITIVE, "SASRec: transformer blocks.")
    sas_heads: int = setting(1, _POSITIVE, "SASRec: attention heads.")
    sas_dropout: float = setting(0.2, _DROPOUT, "SASRec: dropout.")
    # "reference" (the reference code's block; new runs, via CF_DEFAULTS) or "preln" (textbook
    # pre-LN; the value a config.yaml without this field means)
    sas_block: str = setting("preln", Choice(*SAS_BLOCKS), "SASRec block: reference (the reference code's) | preln.")
    # MF's optimiser. "adam" is the reference's (dense Adam with L2 on every row at every step);
    # "sparse-adam" updates only the batch's rows (sparse embeddings + SparseAdam, L2 on those
    # rows): faster steps, other numbers (docs/own-data.md).
    optimizer: str = setting("adam", Choice("adam", "sparse-adam"), "MF optimiser: adam (the reference's: dense, "
                             "L2 on every row each step) | sparse-adam (only the batch's rows; other numbers).")
    extra: dict = setting(spec=_DICT, help="Free-form notes kept with the run.", factory=dict)

    @classmethod
    def for_model(cls, model: str, source: str = "CF config", **overrides) -> CFConfig:
        model = model.lower() if isinstance(model, str) else model
        if model not in CF_DEFAULTS:
            raise CoraError(f"{source}: unknown CF model {model!r} (choose from {', '.join(CF_DEFAULTS)})")
        return cls.from_dict({"model": model, **CF_DEFAULTS[model], **overrides}, source=source)


@declare
@dataclass
class LLMConfig(_YamlConfig):
    """One LLM run: data, method, backbone, adapter, generator and training-loop settings. Each
    field's default is what an older config.yaml without it means; new runs get their method's
    reference settings over it (:data:`LLM_DEFAULTS`)."""

    data: str = setting("", _STR, "Dataset folder.")
    method: str = setting("cora", Choice(*METHOD_NAMES), "LLM method: " + " | ".join(METHOD_NAMES) + ".",
                          kind="method")
    cf: str | None = setting(None, _OPT_STR, "CF run folder (CoRA, CoLLM, BinLLM).", kind="method")
    backbone: str = setting("smollm2-135m", _STR, "smollm2-135m (the offline default), a HF folder, a .gguf file "
                            "or a hub id.")
    dtype: str = setting("fp32", Choice(*DTYPES), "Backbone compute dtype: " + " | ".join(DTYPES) + ".")
    device: str = setting("cpu", Spec(str, pattern=r"cpu|auto|cuda(:\d+)?", shown="one of cpu, cuda, cuda:N, auto"),
                          "cpu | cuda | cuda:N | auto.", kind="placement")
    # fp32 matrix products on TF32 tensor cores (10-bit mantissa inputs, fp32 sums and weights):
    # ~7x plain fp32's peak on an H200 by its datasheet, far closer to fp32 than bf16. Off by
    # default (torch's default). Ignored on a CPU.
    tf32: bool = setting(False, _BOOL, "CUDA only: fp32 matrix products on TF32 tensor cores (recorded).",
                         kind="placement")
    # Where each validation's log record also goes (accelerate's trackers; cora.train.trackers). A
    # window on log.jsonl, not a result: changeable on resume.
    report_to: str = setting("", _STR, "Trackers to report each validation to, comma-separated: tensorboard, "
                             "wandb, mlflow, ... (accelerate's; written under RUN/trackers).", kind="placement")
    # sdpa: torch's fused kernels (transformers' default); eager: the modeling file's plain
    # softmax(QK^T)V, slower, for bisecting a kernel's numerics. A different kernel is a different
    # rounding, so it is compared on resume like the dtype.
    attention: str = setting("sdpa", Choice(*ATTENTION_KERNELS), "Attention kernel: "
                             + " | ".join(ATTENTION_KERNELS) + " (recorded).")
    # Recomputes each decoder layer's activations in the backward pass instead of keeping them:
    # the same loss and gradients (tests/test_paper_scale.py), a fraction of the activation memory,
    # ~1/3 more compute. It changes no number, so a run may resume with it switched.
    gradient_checkpointing: bool = setting(False, _BOOL, "Recompute decoder-layer activations in the backward "
                                           "pass (less memory, ~30 % more compute; same numbers).",
                                           kind="placement")
    # prompt
    max_titles: int = setting(10, Int(0), "History titles in the prompt.")
    # Not the paper's ID-only variant (that is id_only): the target's title stays in the prompt.
    no_titles: bool = setting(False, _BOOL, "Drop the history titles from the prompt (the target's title stays; "
                              "not the paper's ID-only variant: see --id-only).",
                              flag="--no-history-titles/--history-titles")
    id_only: bool = setting(False, _BOOL, "The paper's ID-only variant (Fig. 6): no item text in the prompt at "
                            "all (no history titles, no target title); CoRA keeps its pair weights, CoLLM / "
                            "PersonPrompt their ID slots, BinLLM its codes.", flag="--id-only/--with-text")
    max_length: int | None = setting(None, Int(2, optional=True), "Truncate prompts to N tokens (BOS + at least one).")
    # Subtract the mean initial Yes logit on training prompts from every score (see
    # LLMMethod.logit_offset; a constant, so rankings and AUC are unchanged). False = raw logit.
    calibrate_logit: bool = setting(True, _BOOL, "Subtract the mean initial Yes logit or feed the raw Yes logit to "
                                    "BCE (the reference).", flag="--calibrate-logit/--raw-logit")
    # CoRA adapter and generator (DESIGN sec. 4 / 7)
    modules: str = setting("qkvo", Spec(str, letters=MODULE_LETTERS), "CoRA: adapted modules, letters of "
                           f"{MODULE_LETTERS} (f = the MLP): qkvo, qkvof, qkv, qko, qk.", kind="method")
    rank: int = setting(16, _POSITIVE, "CoRA: rank r of the collaborative weights.", kind="method")
    alpha: float = setting(32.0, Float(0, lo_open=True), "CoRA: scale numerator of the collaborative weights "
                           "(s = alpha / r).", kind="method")
    lora_dropout: float = setting(0.05, _DROPOUT, "Dropout on the low-rank path (CoRA and the peft LoRA).")
    gen_queries: int = setting(4, _POSITIVE, "CoRA generator: query embeddings.", kind="method")
    gen_layers: int | None = setting(None, Int(1, optional=True), "CoRA generator: layers (none: 8 (the paper) for "
                                     "d_model >= 2048, else 2).", kind="method")
    gen_heads: int = setting(8, _POSITIVE, "CoRA generator: attention heads.", kind="method")
    gen_ffn: int | None = setting(None, Int(1, optional=True), "CoRA generator: feed-forward size (none: 3072 (the "
                                  "paper) for d_model >= 2048, else 1024).", kind="method")
    gen_dropout: float = setting(0.1, _DROPOUT, "CoRA generator: dropout.", kind="method")
    # Standard LoRA of the baselines (TALLRec, CoLLM stage 1, BinLLM; peft), CoLLM's settings:
    # r 8, alpha 16, q and v projections; its dropout is lora_dropout above (0.05).
    lora_rank: int = setting(8, _POSITIVE, "Baselines' peft LoRA: rank.")
    lora_alpha: float = setting(16.0, Float(0, lo_open=True), "Baselines' peft LoRA: alpha.")
    lora_targets: str = setting("qv", Spec(str, letters=MODULE_LETTERS), "Baselines' peft LoRA: module letters, "
                                "as --modules.")
    # CoLLM: a two-layer MLP maps CF embeddings to input embeddings (None: 10 x CF dim, as CoLLM)
    collm_mlp_hidden: int | None = setting(None, Int(1, optional=True), "CoLLM: hidden size of the mapping MLP "
                                           "(none: 10 x CF dim).", kind="method")
    # BinLLM: CF embeddings binarised and written into the prompt as text
    binllm_bits: int = setting(32, Int(1, 1024), "BinLLM: bits per code.", kind="method")
    binllm_dot_decimal: bool = setting(False, _BOOL, "BinLLM: codes as 8-bit numbers joined by '.' (BinLLM's "
                                       "'ipv4').", kind="method", flag="--binllm-dot-decimal/--binllm-binary")
    binllm_text_stage: bool = setting(True, _BOOL, "BinLLM: first tune LoRA on the text-only prompt (BinLLM's "
                                      "step 1).", kind="method")
    # Prompt4NR / PersonPrompt (methods/prompt4nr.py, personprompt.py)
    soft_tokens: int = setting(10, _POSITIVE, "Prompt4NR: soft-prompt length (the paper gives none; CoLLM's code: "
                               "3 per slot).", kind="method")
    prompt_lora: bool = setting(False, _BOOL, "Prompt4NR / PersonPrompt: also tune the standard LoRA (CoLLM's soft "
                                "prompt does).", kind="method", flag="--prompt-lora/--no-prompt-lora")
    # "slots": CoLLM's soft-prompt code: ``soft_tokens`` vectors at each of the ``<UserID>`` /
    # ``<TargetItemID>`` slots of its own prompt (new runs, via LLM_DEFAULTS); "prefix":
    # ``soft_tokens`` vectors after BOS on the plain prompt (what a config.yaml without it means)
    soft_prompt: str = setting("prefix", Choice(*SOFT_PROMPTS), "Prompt4NR: slots (CoLLM's code) | prefix (vectors "
                               "after BOS on the plain prompt).", kind="method")
    # "none" (the paper's), "zscore" (each dimension standardised with its mean / std over the
    # training pairs) or "layernorm" (each of the user / item vectors to zero mean, unit variance)
    input_norm: str = setting("none", Choice(*INPUT_NORMS), "CoRA: none (the paper's) | zscore | layernorm: "
                              "normalise each CF embedding before the generator.", kind="method")
    # loop (reference: AdamW, lr 1e-3, warm-up from 1e-5 over 200 steps, cosine to 8e-5)
    batch_size: int = setting(8, _POSITIVE, "Training rows per step.", kind="loop")
    # Shuffled rows are sorted by prompt length within windows of this many batches, then the
    # batches are shuffled; 0 or 1 = plain shuffled batches.
    bucket_window: int = setting(32, Int(0), "Length bucketing: sort by length within N batches (0 or 1: off).")
    grad_accum: int = setting(1, _POSITIVE, "Gradient accumulation steps.", kind="loop")
    lr: float = setting(1e-3, _LR, "Peak learning rate (AdamW).", kind="loop")
    warmup_start_lr: float = setting(1e-5, _FRACTION, "Learning rate the linear warm-up starts from.", kind="loop")
    warmup_steps: int = setting(200, Int(0), "Linear warm-up steps.", kind="loop")
    min_lr: float = setting(8e-5, _FRACTION, "Learning rate the cosine decays to.", kind="loop")
    weight_decay: float = setting(1e-3, _FRACTION, "AdamW weight decay.", kind="loop")
    max_steps: int = setting(2000, _POSITIVE, "Optimizer steps budget (the cap).", kind="loop")
    # The reference's max_epoch x iters_per_epoch (LLM_DEFAULTS), so the lr stays near its peak in
    # any run that stops earlier. None = max_steps (what a config.yaml without this field means).
    lr_horizon: int | None = setting(None, Int(1, optional=True), "Steps the cosine decay spans, independent of "
                                     "--max-steps (none: --max-steps).", kind="loop")
    eval_every: int = setting(100, _POSITIVE, "Validate every N steps.", kind="loop")
    # A CPU run whose validations are 40 minutes apart loses at most this much to a kill. It
    # changes no number of the run (resume is exact), so it is never compared on resume.
    checkpoint_every_min: float = setting(10.0, Float(0), "Also write the resume checkpoint between validations "
                                          "every N minutes (0: after every step).", kind="placement")
    patience: int = setting(20, _POSITIVE, "Stop after N validations without gain.", kind="loop")
    # Off by default: the reference clips nothing. The norm is computed and logged either way.
    max_grad_norm: float | None = setting(None, Float(0, lo_open=True, optional=True), "Clip the gradient's global "
                                          "norm to N before each optimizer step (none: no clipping, the reference's).",
                                          kind="loop")
    # A step whose gradient is not finite (NaN / inf, e.g. a low-precision overflow) is skipped and
    # counted; this many in a row stop the run, keeping its last good checkpoint. It changes no
    # number of a run that finishes, so it may differ on resume.
    max_skipped_steps: int = setting(10, _POSITIVE, "Stop after N consecutive steps skipped for a non-finite loss or "
                                     "gradient.", kind="placement")
    selection_metric: str = setting("auc", Choice(*SELECTION_METRICS), "Validation metric that selects the best "
                                    "step: auc | uauc.")
    limit_train: int | None = setting(None, Int(1, optional=True), "Train on N random training rows.")
    limit_valid: int | None = setting(None, Int(1, optional=True), "Validate on a seeded sample of ~N rows.")
    # A fixed valid_seed gives every row and every seed of an experiment the same validation rows.
    valid_per_user: int | None = setting(None, Int(2, optional=True), "With --limit-valid: at most N rows of each "
                                         "drawn user (none: whole users; UAUC needs both labels of a user).")
    valid_seed: int | None = setting(None, Int(0, SEED_MAX, optional=True), "Seed of the validation sample "
                                     "(none: --seed).")
    eval_batch_size: int = setting(16, _POSITIVE, "Rows per forward pass when scoring.")
    seed: int = setting(42, _SEED, "Random seed.")
    # e.g. BinLLM's {codes: {lr: 1e-4, batch_size: 4}} (see for_stage).
    stage_settings: dict = setting(spec=_DICT, help="Loop settings of one stage of a staged method that differ from "
                                   "the run's.", kind="method", factory=dict)
    extra: dict = setting(spec=_DICT, help="Free-form notes kept with the run.", kind="method", factory=dict)

    @classmethod
    def for_method(cls, fields: dict, cf_model: str | None = None, source: str = "config") -> LLMConfig:
        """``fields`` (a --config YAML, an experiment row, CLI flags) over the reference settings of
        their method (and CF model) from :data:`LLM_DEFAULTS`, over the dataclass defaults. A
        fully resolved run config.yaml holds every field, so the table changes nothing in it."""
        fields = check_fields(cls.__name__, fields, source)  # before method / cf are used as keys and paths
        method = fields.get("method", cls.method)
        if cf_model is None and fields.get("cf"):
            cf_model = cf_model_of(fields["cf"])
        return cls.from_dict({**method_defaults(method, cf_model), **fields}, source=source)

    def for_stage(self, stage: str) -> LLMConfig:
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
PLACEMENT_FIELDS = fields_of_kind(LLMConfig, "placement")

# Settings of every new run that differ from what an older config.yaml without the field means:
# a limited validation sample keeps at most 10 rows of each drawn user (DEFAULT_PER_USER).
NEW_RUN_DEFAULTS: dict[str, Any] = {"valid_per_user": 10}

# What ``stage_settings`` may set: the loop's settings, nothing that changes the method's parts.
STAGE_FIELDS = fields_of_kind(LLMConfig, "loop")

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
    path = Path(run) / layout.CONFIG
    return read_yaml_mapping(path, "CF run config").get("model") if path.exists() else None


def llm_run_config(run: str | Path, cf_hint: str = "use 'cora cf evaluate' for it") -> LLMConfig:
    """The config of the LLM run folder ``run``, read without loading anything (so a bad folder
    fails in one line before the first model loads). ``cf_hint``: what to say when it is a CF run."""
    run = Path(run)
    if not (run / layout.CONFIG).exists():
        raise CoraError(f"{run}: not a cora run folder (no config.yaml)")
    saved = read_yaml_mapping(run / layout.CONFIG, "run config")
    if "model" in saved and "method" not in saved:
        raise CoraError(f"{run}: a CF run, not an LLM run ({cf_hint})")
    return LLMConfig.load(run / layout.CONFIG)
