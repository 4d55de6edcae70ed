"""Run folders for LLM methods: build a method from a config, train it, evaluate it.

The folder's files (config.yaml, model.safetensors, train_summary.json, metrics.json, log.jsonl,
checkpoint/, predictions-<split>.parquet) are named in :mod:`cora.layout`; methods trained in
stages (CoLLM, BinLLM) keep one loop folder per stage, ``RUN/stage-<k>-<name>/``.
"""

from __future__ import annotations

import dataclasses

import resource
import time
from pathlib import Path

import pandas as pd
import torch

from cora import layout
from cora.cf.train import check_cf_dataset, load_cf_run
from cora.config import PLACEMENT_FIELDS, LLMConfig, llm_run_config
from cora.train.trackers import check_trackers
from cora.data.sampling import sample_rows, sample_users, split_key
from cora.data.store import Dataset, load_dataset
from cora.errors import CoraError
from cora.eval.metrics import evaluate_predictions
from cora.io import (
    read_json,
    removed_on_failure,
    update_json,
    write_json,
    write_parquet,
)
from cora.llm.backbone import load_backbone
from cora.memory import measured
from cora.methods import method_class
from cora.methods.base import LLMMethod
from cora.progress import phase, quiet_hf, say
from cora.ranges import fields_of_kind
from cora.train.checkpoint import load_tensors, save_tensors
from cora.train.loop import fit, hardware, make_accelerator, predict


def build_method(cfg: LLMConfig, backbone=None, load_device: str | None = None) -> tuple[LLMMethod, Dataset]:
    """The method named by ``cfg`` on its backbone (and CF run), untrained. ``load_device``:
    where the backbone loads when not ``cfg.device`` (FSDP: the CPU, then each process's shard
    moves to its GPU)."""
    cls = method_class(cfg.method)
    ds = load_dataset(cfg.data)
    cf_model = None
    if cls.uses_cf:
        if not cfg.cf:
            raise CoraError(f"method '{cfg.method}' needs a CF run: pass --cf RUN (train one with 'cora cf train')")
        cf_model, cf_cfg, cf_ds = load_cf_run(cfg.cf)
        check_cf_dataset(cfg.cf, cf_ds, ds)
    # Process-wide in torch; set from the run's config so that a run says which precision it had.
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32
    memory: dict = {}
    if backbone is None:
        quiet_hf()  # transformers' own loading bar beside rich's: one style only
        device = load_device or cfg.device
        phase(f"loading the backbone {cfg.backbone} ({cfg.dtype}, {device})")
        with measured(memory, "load"):
            backbone = load_backbone(cfg.backbone, dtype=cfg.dtype, device=device, attention=cfg.attention)
    torch.manual_seed(cfg.seed)  # the generator's initial weights depend on the seed only
    method = cls(backbone, cfg, cf_model) if cls.uses_cf else cls(backbone, cfg)
    # New parts (generator, B, MLPs, the CF model) are built on the CPU: join the backbone's device.
    method.to(backbone.device)
    method.memory = memory  # peaks of the phases so far (the load); fit and scoring add theirs
    return method, ds


# What a resume may change when asked (--allow-changed): the learning rate (a run that diverged)
# and the precision (a run that overflowed in fp16 / bf16), each recorded in RESUME_CHANGES.
CHANGEABLE_ON_RESUME = ("lr", "dtype", "attention")


def _start_run(cfg: LLMConfig, out: Path, resume: bool, allow_changed: set[str] = frozenset()) -> None:
    if bad := sorted(set(allow_changed) - set(CHANGEABLE_ON_RESUME)):
        raise CoraError(f"--allow-changed: only {', '.join(CHANGEABLE_ON_RESUME)} may change on resume "
                        f"(got {', '.join(bad)})")
    out.mkdir(parents=True, exist_ok=True)
    saved = out / layout.CONFIG
    if saved.exists():
        if not resume:
            raise CoraError(f"{out}: a run is already there (pass --resume to continue it, or choose another --out)")
        # may be raised to continue a run; or continued on another device
        keep_free = {"max_steps", "patience", "eval_every"} | PLACEMENT_FIELDS
        before = LLMConfig.load(saved)
        if diff := cfg.differing_fields(before, ignore=keep_free | set(allow_changed)):
            hint = (f", or pass --allow-changed {','.join(d for d in diff if d in CHANGEABLE_ON_RESUME)} to continue "
                    "with the new values" if any(d in CHANGEABLE_ON_RESUME for d in diff) else "")
            raise CoraError(f"{out}: the existing run used other settings for {', '.join(diff)}; "
                            f"use another --out or the same settings{hint}")
        if changed := cfg.differing_fields(before, ignore=set(LLMConfig.__dataclass_fields__) - set(allow_changed)):
            _record_resume_change(out, {f: [getattr(before, f), getattr(cfg, f)] for f in changed})
    cfg.save(saved)


def _record_resume_change(out: Path, changed: dict[str, list]) -> None:
    """Append what a resume changed, and at which step, to RUN/resume_changes.json."""
    from cora.safe_state import read_state
    from cora.train.checkpoint import has_checkpoint

    ckpt = out / layout.CHECKPOINT
    step = read_state(ckpt, "state")["step"] if has_checkpoint(ckpt) else 0  # not the trainable tensors
    path = out / layout.RESUME_CHANGES
    history = read_json(path) if path.exists() else []
    write_json(path, [*history, {"step": step, "changed": changed,
                                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}])


def train_run(cfg: LLMConfig, out: str | Path, resume: bool = False, show_progress: bool = True,
              backbone=None, stage_from: dict[str, str | Path] | None = None, keep_checkpoint: bool = False,
              allow_changed: set[str] = frozenset()) -> dict:
    """Train the method of ``cfg`` into the run folder ``out``. ``stage_from`` maps a stage name to
    a finished run that already trained exactly that stage (see :func:`reuse_stage`). A finished
    run (and each finished stage) deletes its resume state ``checkpoint/`` unless ``keep_checkpoint``:
    a run option, not a config field, so it never stops a run from resuming. ``allow_changed``:
    settings of :data:`CHANGEABLE_ON_RESUME` a resume may change (recorded in the run folder)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CoraError(f"{out}: exists and is not a folder (choose another --out)")
    check_trackers(cfg.report_to)  # a missing tracker package: one line, before the backbone loads
    # Under `accelerate launch` every process runs this; one of them opens the run folder. The
    # process group is set up here, with the CPU flag, before anything asks who is main.
    acc = make_accelerator(cfg)
    # A run that fails before its first checkpoint (bad data, a bad stage donor, a batch that
    # cannot run) leaves nothing in --out; one that fails later keeps it for --resume.
    with removed_on_failure(out, keep=_has_progress, enabled=acc.is_main_process):
        return _train_run(cfg, out, acc, resume, show_progress, backbone, stage_from, keep_checkpoint,
                          allow_changed)


def _has_progress(out: Path) -> bool:
    """Whether ``out`` holds anything a --resume would start from (a checkpoint, best weights)."""
    return any((d / layout.CHECKPOINT).exists() or (d / layout.WEIGHTS).exists()
               for d in [out, *out.glob("stage-*")])


def _train_run(cfg: LLMConfig, out: Path, acc, resume: bool, show_progress: bool, backbone,
               stage_from: dict[str, str | Path] | None, keep_checkpoint: bool,
               allow_changed: set[str] = frozenset()) -> dict:
    method, ds = build_method(cfg, backbone, load_device="cpu" if acc.is_fsdp2 else None)
    stage_from = stage_from or {}
    stages = method.stages() if len(method.stages()) > 1 else ()  # () = one plain fit
    if stages and acc.is_fsdp2:  # each stage changes which parameters train, and FSDP shards once
        raise CoraError(f"method '{cfg.method}' trains in stages ({', '.join(stages)}), which FSDP does not support "
                        "yet: train it with --multi_gpu (DDP) or on one GPU")
    if unknown := sorted(set(stage_from) - set(stages)):
        raise CoraError(f"method '{cfg.method}' has no stage {', '.join(unknown)} to take from another run"
                        + (f" (stages: {', '.join(stages)})" if stages else " (it trains in one stage)"))
    if unknown := sorted(set(cfg.stage_settings) - set(method.stages())):
        raise CoraError(f"stage_settings: method '{cfg.method}' has no stage {', '.join(unknown)} "
                        f"(stages: {', '.join(method.stages())})")
    for name in method.stages():
        cfg.for_stage(name)  # each stage's own settings are valid before any work starts
    if acc.is_main_process:
        _start_run(cfg, out, resume, allow_changed)
    acc.wait_for_everyone()
    if not any(p.requires_grad for p in method.parameters()):
        summary = {"steps": 0, "stop_reason": "nothing to train", "wall_time_s": 0.0,
                   "hardware": hardware(acc.device, cfg)}  # where it will score
        write_json(out / layout.SUMMARY, summary)
        return summary
    train_df = sample_rows(ds.split("train"), cfg.limit_train, cfg.seed)
    valid_seed = cfg.seed if cfg.valid_seed is None else cfg.valid_seed
    valid_df = sample_users(ds.split("valid_small"), cfg.limit_valid, valid_seed, per_user=cfg.valid_per_user)
    if stages:
        return _fit_stages(method, train_df, valid_df, ds.domain, cfg, out, resume, show_progress, stage_from,
                           keep_checkpoint=keep_checkpoint)
    phase(f"tokenising {len(train_df):,} training and {len(valid_df):,} validation prompts")
    train, valid = method.encode(train_df, ds.domain), method.encode(valid_df, ds.domain)
    return fit(method, train, valid, cfg.for_stage(method.stages()[0]), out, resume=resume, show_progress=show_progress,
               keep_checkpoint=keep_checkpoint)


def _fit_stages(method: LLMMethod, train_df: pd.DataFrame, valid_df: pd.DataFrame, domain: str, cfg: LLMConfig,
                out: Path, resume: bool, show_progress: bool, stage_from: dict[str, str | Path],
                keep_checkpoint: bool = False) -> dict:
    """Each stage is one ``fit`` (own log, checkpoints, resume) in RUN/stage-<k>-<name>/, started
    from the best weights of the stages before it; RUN/model.safetensors then holds the best
    tensors of every stage, so ``load_run`` sees a finished method like any other."""
    from accelerate import PartialState

    summaries = {}
    for k, name in enumerate(method.stages(), 1):
        sub = out / f"stage-{k}-{name}"
        sub.mkdir(exist_ok=True)
        method.begin_stage(name)
        if name in stage_from:
            summaries[name] = reuse_stage(method, cfg, Path(stage_from[name]), sub)
            if show_progress:  # a log should say why a stage took no time
                say(f"stage {k} ({name}): taken from {stage_from[name]}, not trained again")
            continue
        # Encoded per stage: a stage may have its own prompt.
        phase(f"stage {k} ({name}): tokenising {len(train_df):,} training and {len(valid_df):,} validation prompts")
        train, valid = method.encode(train_df, domain), method.encode(valid_df, domain)
        summaries[name] = fit(method, train, valid, cfg.for_stage(name), sub, resume=resume,
                              show_progress=show_progress, keep_checkpoint=keep_checkpoint)
        method.load_trainable_state_dict(load_tensors(sub / layout.WEIGHTS))
    method.begin_stage(None)
    if PartialState().is_main_process:
        save_tensors(out / layout.WEIGHTS, method.trainable_state_dict())
    # The last stage's figures, with steps and time summed over the stages.
    summary = {**summaries[name], "steps": sum(s["steps"] for s in summaries.values()),
               "wall_time_s": round(sum(s["wall_time_s"] for s in summaries.values()), 1), "stages": summaries}
    if hw := _stages_hardware(summaries):
        summary["hardware"] = hw
    if PartialState().is_main_process:
        write_json(out / layout.SUMMARY, summary)
    return summary


def _stages_hardware(summaries: dict[str, dict]) -> str | None:
    """Where a staged run trained, when its stages trained in different places (CoLLM's LoRA
    stage taken from a GPU run, its mapping trained on a CPU): 'NVIDIA H200 tf32 (lora) + cpu x1
    fp32 (mapping)'. None when they agree (the last stage's hardware says it all)."""
    places: dict[str, list[str]] = {}
    for stage, s in summaries.items():
        if s.get("hardware"):
            places.setdefault(s["hardware"], []).append(stage)
    if len(places) < 2:
        return None
    return " + ".join(f"{hw} ({', '.join(stages)})" for hw, stages in places.items())


# Settings that do not touch a text-only LoRA stage (CoLLM's / BinLLM's first stage is TALLRec):
# where it ran, the method's own parts (kinds "placement" and "method" in cora.config), plus two
# that do not change what the stage trained: how validation batches rows, and the seed (a donor
# trained with another seed is the same training of another draw: seeded rows may share one,
# CoLLM-MF's seeds on one TALLRec run; the stage's summary keeps the donor's seed).
_NOT_STAGE_SETTINGS = fields_of_kind(LLMConfig, "placement", "method") | {"eval_batch_size", "seed"}


def reuse_stage(method: LLMMethod, cfg: LLMConfig, donor: Path, sub: Path) -> dict:
    """Take stage ``method.stage`` from the finished run ``donor`` instead of training it again.

    CoLLM's and BinLLM's first stage is TALLRec itself (the same LoRA on the same text prompt,
    data, budget and seed; CoLLM's authors start stage 2 from their TALLRec checkpoint too), so
    an experiment with TALLRec, CoLLM-MF/-LGCN/-SAS and BinLLM trains it once, not five times.
    The donor must have been trained with the same settings and hold exactly the tensors this
    stage trains; anything else is an error naming the difference."""
    if not (donor / layout.SUMMARY).exists() or not (donor / layout.WEIGHTS).exists():
        raise CoraError(f"{donor}: no finished run to take stage '{method.stage}' from "
                        "(train_summary.json or model.safetensors missing)")
    # Compared as each run trains this stage: a later stage's own settings (BinLLM's lr and batch
    # for its codes stage) do not make the first stage a different training.
    donor_cfg = LLMConfig.load(donor / layout.CONFIG).for_stage(method.stage)
    if diff := cfg.for_stage(method.stage).differing_fields(donor_cfg, ignore=_NOT_STAGE_SETTINGS):
        raise CoraError(f"{donor}: trained with other settings for {', '.join(diff)}; "
                        f"stage '{method.stage}' cannot be taken from it")
    state = load_tensors(donor / layout.WEIGHTS)
    try:
        method.load_trainable_state_dict(state)
    except CoraError as e:
        raise CoraError(f"{donor}: its tensors are not what stage '{method.stage}' trains ({e})") from None
    summary = {**read_json(donor / layout.SUMMARY), "reused_from": str(donor), "donor_seed": donor_cfg.seed}
    from accelerate import PartialState

    if PartialState().is_main_process:
        save_tensors(sub / layout.WEIGHTS, method.trainable_state_dict())
        write_json(sub / layout.SUMMARY, summary)
    return summary


def load_run(run: str | Path, backbone=None, device: str | None = None,
             dtype: str | None = None) -> tuple[LLMMethod, LLMConfig, Dataset]:
    """A trained run's method with its best trainable tensors loaded; ``device`` / ``dtype`` score it
    elsewhere than it trained (a CUDA run on a CPU, an fp32 run in bf16)."""
    run = Path(run)
    cfg = llm_run_config(run)
    if device is not None or dtype is not None:
        cfg = dataclasses.replace(cfg, device=device or cfg.device, dtype=dtype or cfg.dtype)
    weights = run / layout.WEIGHTS
    state = load_tensors(weights) if weights.exists() else None  # a corrupt file fails before the backbone loads
    method, ds = build_method(cfg, backbone)
    if any(p.requires_grad for p in method.parameters()):
        if state is None:
            raise CoraError(f"{weights}: not found; the run has not finished a validation yet (train it further)")
        method.load_trainable_state_dict(state, source=weights)
    method.eval()
    return method, cfg, ds


def evaluate_run(run: str | Path, split: str = "test", limit: int | None = None, show_progress: bool = True,
                 backbone=None, per_user: int | None = None, device: str | None = None,
                 dtype: str | None = None) -> dict:
    """Score a split (or the seeded whole-user sample ``limit`` / ``per_user`` of it, see
    :func:`cora.data.sampling.sample_users`) with the run's best weights; writes predictions and
    updates metrics.json under :func:`cora.data.sampling.split_key`. ``device`` / ``dtype``: score
    elsewhere than the run trained (a CUDA run on a CPU); metrics.json says where it scored."""
    run = Path(run)
    if split not in ("valid", "valid_small", "test"):
        raise CoraError(f"unknown split '{split}' (choose valid, valid_small or test)")
    # The accelerator first: under `accelerate launch` it gives each process its own GPU, which the
    # backbone must then load onto (loaded before, every replica would land on cuda:0).
    trained = llm_run_config(run)
    acc = make_accelerator(dataclasses.replace(trained, device=device or trained.device))
    placed = str(acc.device) if acc.device.type == "cuda" else device
    if acc.is_fsdp2:  # loaded whole on the CPU, then each process keeps its shard (prepare moves it)
        placed = "cpu"
    method, cfg, ds = load_run(run, backbone, device=placed, dtype=dtype)
    if acc.is_fsdp2:
        method = acc.prepare(method).eval()
    df = sample_users(ds.split(split), limit, seed=0, per_user=per_user)
    phase(f"tokenising {len(df):,} {split} prompts")
    encoded = method.encode(df, ds.domain)
    t0 = time.time()  # each process scores a shard under `accelerate launch`
    with measured(method.memory, "score"):
        scores = predict(method, encoded, cfg.eval_batch_size, acc,
                         show_progress=show_progress and acc.is_main_process, description=f"{cfg.method} {split}")
    elapsed = time.time() - t0
    pred = encoded.frame.assign(score=scores)[["uid", "iid", "label", "score", "not_cold"]]
    key = split_key(split, limit, per_user)
    if not acc.is_main_process:  # every process holds all the predictions; one writes them
        return evaluate_predictions(pred)
    write_parquet(run / layout.predictions(key), pred)
    metrics = evaluate_predictions(pred)
    metrics["eval"] = {"limit": limit, "per_user": per_user, "wall_time_s": round(elapsed, 1), "rows_per_s": round(len(pred) / max(elapsed, 1e-9), 2),
                       "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                       "memory": method.memory, "device": acc.device.type, "dtype": cfg.dtype}
    update_json(run / layout.METRICS, {key: metrics})
    return metrics
