"""The one training loop for every LLM method (nanoGPT-style: one readable function).

AdamW (decay on matrices only), linear warm-up + cosine, gradient accumulation, validation every
``eval_every`` optimizer steps on valid_small, best / last checkpoints of the trainable tensors,
patience, exact resume, and a progress bar. Built on ``accelerate`` so the same code runs on CPU,
one GPU or several processes.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from cora import layout
from cora.config import LLMConfig
from cora.errors import CoraError
from cora.eval.metrics import auc, uauc
from cora.io import is_no_space, kill_point, no_space_error, read_json, write_json
from cora.methods.base import EncodedSplit, LLMMethod
from cora.progress import ValidationClock, progress_bar, scoring_bar
from cora.train.checkpoint import (
    LoopState,
    drop_checkpoint,
    has_checkpoint,
    load_loop,
    prepare_resume,
    save_loop,
    save_tensors,
)
from cora.train.sharding import (
    is_sharded,
    load_whole_optimizer_state,
    load_whole_trainable_state,
    total_grad_norm,
    whole_optimizer_state,
    whole_trainable_state,
)
from cora.memory import phase_peak, reset_peak
from cora.train.precision import Precision, autocast_for
from cora.train.trackers import Trackers
from cora.train.sampling import EpochBatches
from cora.train.schedule import warmup_cosine


def hardware(device: torch.device, cfg: LLMConfig) -> str:
    """Where a run computed, for its summary and the experiment table: the GPU's name (with its
    fp32 matmul mode and dtype) or 'cpu' with its thread count; samples/s means nothing without it."""
    if device.type == "cuda":
        mode = "tf32" if cfg.tf32 and cfg.dtype == "fp32" else cfg.dtype
        # Under `cora experiment --gpus` a worker sees one GPU as cuda:0: name the machine's id.
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        which = f" (GPU {visible})" if visible and "," not in visible else ""
        return f"{torch.cuda.get_device_name(device)}{which} {mode}"
    return f"cpu x{torch.get_num_threads()} {cfg.dtype}"


def accelerator_placement(device: str, cuda_available: bool, distributed: bool) -> tuple[bool, int | None]:
    """(run on CUDA?, the GPU index to make current) for ``--device``: ``cuda:N`` is that GPU in
    one process; under a distributed launch each process takes the GPU of its local rank (accelerate),
    so an index is not applied. ``auto`` is CUDA when there is one."""
    if device == "cpu" or not cuda_available:
        return False, None
    if device == "auto" or device == "cuda":
        return True, None
    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else None
    return True, None if distributed else index


def make_accelerator(cfg: LLMConfig) -> Accelerator:
    # The frozen backbone already holds the compute dtype (bf16 weights run bf16 matmuls), and
    # trainable tensors stay fp32; the fp16 recipe's autocast and loss scaling are the loop's own
    # (cora.train.precision), the same on a CPU and a GPU, so accelerate mixes nothing in.
    distributed = int(os.environ.get("LOCAL_RANK", -1)) != -1
    cuda, index = accelerator_placement(cfg.device, torch.cuda.is_available(), distributed)
    if index is not None:  # accelerate's one-process device is "cuda", i.e. the current GPU: make it cuda:N
        torch.cuda.set_device(index)
    # accelerate keeps one device per process (a shared state): a CPU run followed by a CUDA run
    # in one Python process (a notebook, a test) would put the second run's batches on the CPU
    # beside a model on the GPU. Outside a distributed launch, start the state afresh.
    from accelerate.state import AcceleratorState, PartialState

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise CoraError("DeepSpeed is not supported: ZeRO-3 keeps a layer's parameters partitioned outside its forward, "
                        "and CoRA's adapter is tested under FSDP2 only; launch with configs/accelerate-fsdp.yaml "
                        "(FSDP2) or --multi_gpu (DDP) instead (docs/gpu.md)")
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if fsdp:
        check_fsdp_launch(cfg)
    asked = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if asked != "no":  # an accelerate config's mixed precision would be silently overridden below
        raise CoraError(f"your accelerate config asks for mixed_precision {asked}; cora's precision is its own "
                        f"--dtype (fp32 | bf16 | fp16 with loss scaling): set mixed_precision: no in the config "
                        f"and pass --dtype {'fp16' if asked == 'fp16' else 'bf16'}")
    have = PartialState._shared_state.get("device")
    if have is not None and (have.type == "cuda") != cuda and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    acc = Accelerator(cpu=not cuda, mixed_precision="no")
    if fsdp and acc.num_processes > 1 and not acc.is_fsdp2:
        # accelerate demotes an FSDP launch on a CPU to plain DDP (DistributedType.MULTI_CPU): run
        # what was asked instead, its FSDP2 path over the gloo group (how the CPU tests check it).
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        acc.state.distributed_type = DistributedType.FSDP
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # its settings from the launch's environment
    return acc


def check_fsdp_launch(cfg: LLMConfig) -> None:
    """An FSDP launch the loop can run: FSDP2 (per-parameter shards; FSDP1's flat parameters hide
    the B's CoRA's adapter reads across layers) and no fp16 loss scaling (its scaler does not
    unscale sharded gradients). One line each, before anything loads."""
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise CoraError(f"your accelerate config asks for FSDP version {version}; cora trains under FSDP2 only: set "
                        "fsdp_version: 2 (configs/accelerate-fsdp.yaml)")
    if cfg.dtype == "fp16":
        raise CoraError("--dtype fp16 (loss scaling) is not supported under FSDP: use --dtype bf16 or fp32")


@torch.no_grad()
def predict(method: LLMMethod, split: EncodedSplit, batch_size: int, accelerator: Accelerator | None = None,
            show_progress: bool = False, description: str = "scoring") -> np.ndarray:
    """Yes logits for every row, in the split's order. Rows are scored sorted by length so a batch
    holds prompts of similar length (little padding); each process scores a disjoint shard and the
    shards are gathered without duplicates."""
    was_training = method.training
    method.eval()
    n = len(split)
    order = np.argsort(split.lengths, kind="stable")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    mine = order[rank::world]
    if world > 1 and is_sharded(method) and len(mine) < -(-n // world):
        # Under FSDP every forward is a collective (each layer gathers its shards): every process
        # must run as many batches, so a short share repeats one of its rows (scored twice, kept once).
        mine = np.append(mine, mine[-1] if len(mine) else order[0])
    scores: dict[int, float] = {}
    device = accelerator.device if accelerator else torch.device("cpu")
    with scoring_bar(description, len(mine), show_progress) as advance, autocast_for(method.cfg.dtype, device.type):
        for start in range(0, len(mine), batch_size):
            rows = mine[start:start + batch_size].tolist()
            batch = {k: v.to(device) for k, v in method.collate(split, rows).items()}
            logits = method(batch).float().cpu().tolist()
            scores.update(zip(rows, logits))
            advance(len(rows))
            kill_point("predict-batch")  # the kill -9 tests' mid-validation moment (cora.io.kill_point)
    if world > 1:
        from accelerate.utils import gather_object

        merged: dict[int, float] = {}
        for part in gather_object([scores]):
            merged.update(part)
        scores = merged
    method.train(was_training)
    return np.array([scores[i] for i in range(n)], dtype=np.float64)


def _optimizer(method: LLMMethod, cfg: LLMConfig) -> torch.optim.Optimizer:
    params = [p for p in method.parameters() if p.requires_grad]  # fit checked there are some
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.999))


def selection_score(labels: np.ndarray, users: np.ndarray, scores: np.ndarray, metric: str) -> float:
    value = auc(labels, scores) if metric == "auc" else uauc(users, labels, scores)[0]
    return -math.inf if math.isnan(value) else float(value)


def calibrate_offset(method: LLMMethod, train: EncodedSplit, cfg: LLMConfig, acc, n: int = 64) -> float:
    """Set ``method.logit_offset`` to the mean Yes logit of ``n`` seeded training prompts."""
    rows = np.random.default_rng(cfg.seed).permutation(len(train))[:n]
    method.logit_offset.zero_()
    offset = float(predict(method, train.subset(rows), cfg.eval_batch_size, acc).mean())
    method.logit_offset.fill_(offset)
    return offset


def fit(method: LLMMethod, train: EncodedSplit, valid: EncodedSplit, cfg: LLMConfig, out: Path,
        resume: bool = True, show_progress: bool = True, keep_checkpoint: bool = False) -> dict:
    """Train ``method`` until ``max_steps`` or ``patience`` validations without improvement.

    ``out/checkpoint/`` (last state) is written at every validation and deleted when the run
    finishes, unless ``keep_checkpoint``. Killed at any moment (kill -9 included) and resumed, the
    run ends with the same tensors, log and summary figures as one that ran through."""
    from accelerate import PartialState

    out = Path(out)
    summary_path = out / layout.SUMMARY
    ckpt = out / layout.CHECKPOINT
    if resume and summary_path.exists():
        if not keep_checkpoint and PartialState().is_main_process:
            drop_checkpoint(ckpt)  # killed between writing the summary and deleting it
        return read_json(summary_path)
    torch.manual_seed(cfg.seed)
    memory = dict(getattr(method, "memory", {}))  # the load's peak, when this process loaded the backbone
    peak_resettable = reset_peak()  # from here on: the training phase's peak
    acc = make_accelerator(cfg)
    if not any(p.requires_grad for p in method.parameters()):  # before DDP says it in its words
        raise CoraError(f"method '{cfg.method}' has no trainable parameters: evaluate it directly")
    # The model and its optimizer are prepared together: under FSDP2 prepare replaces each
    # parameter by its shard and points the optimizer at the shards (DDP replaces nothing).
    opt = _optimizer(method, cfg)
    # The cosine spans lr_horizon (the reference's max_epoch x iters_per_epoch), not the steps this
    # run may take: a run stopped early has trained at the reference's lr, not at a decayed one.
    sched = warmup_cosine(opt, cfg.lr, cfg.warmup_start_lr, cfg.warmup_steps, cfg.min_lr,
                          cfg.lr_horizon or cfg.max_steps)
    # No DataLoader: batches are collated from cached token ids on the fly, and a global batch of
    # batch_size * processes rows is cut into one slice per process, so N processes with batch b
    # see exactly the rows of one process with batch N*b, and a resumed run skips exactly the
    # batches it has seen (no iterator seeds drawn from the global RNG).
    world, rank = acc.num_processes, acc.process_index
    sampler = EpochBatches(len(train), cfg.batch_size * world, cfg.seed, drop_last=world > 1,
                           lengths=train.lengths, window=cfg.bucket_window)
    if len(sampler) == 0:
        raise CoraError(f"training split has {len(train)} rows, fewer than one batch of {cfg.batch_size * world}")
    model, opt = acc.prepare(method, opt)
    unwrapped: LLMMethod = acc.unwrap_model(model)
    precision = Precision(cfg.dtype, acc.device)

    st = LoopState(world_size=world)
    # The step of the checkpoint on disk (None: none yet), for the message of a run stopped by
    # non-finite steps.
    last_saved: dict = {"step": None}
    clock = ValidationClock(len(valid), show_progress)  # the time of each validation, said before it
    if acc.is_main_process:
        prepare_resume(out)  # a kill mid-swap leaves the last checkpoint aside: put it back
    acc.wait_for_everyone()
    if resume and has_checkpoint(ckpt):
        trainable, optimizer_state, st = load_loop(ckpt, sched, world_size=world)
        load_whole_optimizer_state(unwrapped, opt, optimizer_state)
        _continue_schedule_at(cfg.lr, opt, sched)  # a resume allowed to change lr (--allow-changed lr)
        precision.load_state_dict(st.precision)
        load_whole_trainable_state(unwrapped, trainable)
        last_saved["step"] = st.step
    elif cfg.calibrate_logit:
        with clock.calibrating(min(64, len(train))):  # its rows/s estimates the first validation's time
            calibrate_offset(unwrapped, train, cfg, acc)
    valid_labels, valid_users = valid.label.numpy(), valid.uid.numpy()
    log_path = out / layout.LOG
    if acc.is_main_process and log_path.exists() and log_path.stat().st_size > st.log_bytes:
        # Lines written after the checkpoint this run starts from (a kill between a validation's
        # log line and its checkpoint, or before the first checkpoint) are about to be written
        # again: drop them, or the log would hold them twice.
        os.truncate(log_path, st.log_bytes)
    log = open(log_path, "a")
    trackers = Trackers(cfg.report_to if acc.is_main_process else "", out.name, out, cfg.to_dict())
    # t0 starts the training clock (time_s, wall_time_s), set back by the time trained before a
    # resume; `started` times this process alone, for its samples/s.
    # A checkpoint written at the validation that ran out of patience (killed before the summary)
    # resumes into a stopped run, not into more steps.
    started, seen, stop_reason = time.time(), 0, "patience" if st.bad >= cfg.patience else "max_steps"
    t0 = started - st.elapsed_s
    last_save = started
    trainable = [p for p in model.parameters() if p.requires_grad]  # whose gradient norm is taken

    def checkpoint() -> None:
        """The last state, swapped in atomically by the main process; every process calls it (a
        sharded model's whole tensors are gathered by all of them)."""
        nonlocal last_save
        main = acc.is_main_process
        tensors, optimizer_state = whole_trainable_state(unwrapped, main), whole_optimizer_state(unwrapped, opt, main)
        if main:
            st.elapsed_s = time.time() - t0
            st.log_bytes = os.fstat(log.fileno()).st_size  # the log as of this checkpoint (flushed before)
            st.precision = precision.state_dict()
            save_loop(ckpt, tensors, st, optimizer_state, sched)
        last_save = time.time()
        last_saved["step"] = st.step

    def bar_info(loss: float, rate: float) -> str:  # reads `best` when called: after a validation too
        return f"loss {loss:.4f}  {rate:.1f} samples/s  best {cfg.selection_metric} {st.best['score']:.4f}@{st.best['step']}"

    model.train()
    with progress_bar(show_progress and acc.is_main_process) as progress:
        task = progress.add_task(f"train {cfg.method}", total=cfg.max_steps, completed=st.step, info="")
        while st.step < cfg.max_steps and stop_reason == "max_steps":
            epoch, offset = divmod(st.micro, len(sampler))
            sampler.set_epoch(epoch)
            for i, rows in enumerate(sampler):
                if i < offset:
                    continue
                local = rows[rank * cfg.batch_size:(rank + 1) * cfg.batch_size]
                batch = {k: v.to(acc.device) for k, v in unwrapped.collate(train, local).items()}
                sync = (st.micro + 1) % cfg.grad_accum == 0
                ctx = acc.no_sync(model) if not sync else _null()
                with ctx:
                    with precision.autocast():
                        logits = model(batch)
                    loss = F.binary_cross_entropy_with_logits(logits.float(), batch["label"].float())
                    # Backward even when the loss is not finite: under DDP every process must take
                    # part; the non-finite gradient then decides the step (the same on every process).
                    precision.backward(acc, loss / cfg.grad_accum)
                st.micro += 1
                seen += len(rows)
                if math.isfinite(value := loss.item()):
                    st.running.append(value)
                if not sync:
                    continue
                precision.unscale(opt)
                norm = _grad_norm(trainable, cfg, acc)
                st.grad_norms.append(norm if math.isfinite(norm) else None)
                precision.step(opt, finite=math.isfinite(norm))
                if math.isfinite(norm):
                    st.skipped_in_row = 0
                else:  # skipped and counted; the schedule moves on, as under a loss scaler
                    st.skipped += 1
                    st.skipped_in_row += 1
                    progress.console.print(f"step {st.step + 1}: the loss or gradient is not finite (loss {value}, "
                                           f"gradient norm {norm}); step skipped ({st.skipped_in_row} in a row, "
                                           f"{st.skipped} in all" + (f", loss scale now {precision.loss_scale:g}"
                                                                        if precision.loss_scale else "") + ")")
                    if st.skipped_in_row >= cfg.max_skipped_steps:
                        raise CoraError(_skipped_message(st, cfg, out, last_saved))
                with warnings.catch_warnings():  # a skipped step moves the schedule on without opt.step()
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step",
                                            category=UserWarning)
                    sched.step()
                opt.zero_grad(set_to_none=True)
                st.step += 1
                kill_point("step")  # the kill -9 tests' mid-training moment (cora.io.kill_point)
                rate = seen / max(time.time() - started, 1e-9)
                progress.update(task, completed=st.step,
                                info=bar_info(np.mean(st.running[-20:]) if st.running else math.nan, rate))
                if st.step % cfg.eval_every == 0 or st.step == cfg.max_steps:
                    with clock.validation(st.step):
                        scores = predict(unwrapped, valid, cfg.eval_batch_size, acc,
                                         show_progress=show_progress and acc.is_main_process, description="validation")
                    score = selection_score(valid_labels, valid_users, scores, cfg.selection_metric)
                    improved = score > st.best["score"]
                    if improved:
                        st.best, st.bad = {"score": score, "step": st.step}, 0
                        best = whole_trainable_state(unwrapped, acc.is_main_process)  # gathered by all when sharded
                        if acc.is_main_process:
                            save_tensors(out / layout.WEIGHTS, best)
                    else:
                        st.bad += 1
                    norms = [n for n in st.grad_norms if n is not None]
                    record = {"step": st.step, "epoch": epoch,
                              "loss": float(np.mean(st.running)) if st.running else None, "lr": sched.get_last_lr()[0],
                              f"valid_{cfg.selection_metric}": score, "best": st.best["score"], "best_step": st.best["step"],
                              "samples_per_s": round(rate, 2), "time_s": round(time.time() - t0, 1),
                              "grad_norm": norms[-1] if norms else None, "grad_norm_max": max(norms) if norms else None,
                              "skipped_steps": st.skipped}
                    if precision.loss_scale is not None:
                        record["loss_scale"] = precision.loss_scale
                    st.running, st.grad_norms = [], []
                    progress.update(task, info=bar_info(record["loss"] or math.nan, rate))  # the best may have changed
                    if acc.is_main_process:
                        if trackers.open:  # both validation metrics and the phase's peak memory, beside the record
                            other = "uauc" if cfg.selection_metric == "auc" else "auc"
                            trackers.log({**record, f"valid_{other}": selection_score(
                                valid_labels, valid_users, scores, other), **phase_peak(peak_resettable)}, st.step)
                        try:
                            log.write(json.dumps(record) + "\n")
                            log.flush()
                        except OSError as e:
                            if is_no_space(e):
                                raise no_space_error(log_path, "the last checkpoint is intact") from None
                            raise
                        if show_progress and not progress.console.is_terminal:
                            # A bar is invisible in a log file: say each validation in one line.
                            progress.console.print(f"step {st.step}/{cfg.max_steps}  loss {record['loss'] or math.nan:.4f}  valid "
                                                   f"{cfg.selection_metric} {score:.4f}  best {st.best['score']:.4f}"
                                                   f"@{st.best['step']}  {rate:.1f} samples/s  {record['time_s']:.0f}s")
                    checkpoint()
                    acc.wait_for_everyone()
                    if st.bad >= cfg.patience:
                        stop_reason = "patience"
                elif st.step < cfg.max_steps and _main_says(acc, time.time() - last_save >= 60 * cfg.checkpoint_every_min):
                    # Between validations: the same state, so a kill costs minutes, not a whole
                    # validation interval.
                    checkpoint()
                    acc.wait_for_everyone()
                if st.step >= cfg.max_steps or stop_reason != "max_steps":
                    break
    log.close()
    trackers.close()
    summary = {"steps": st.step, "stop_reason": stop_reason, "best_step": st.best["step"], "skipped_steps": st.skipped,
               f"best_valid_{cfg.selection_metric}": st.best["score"], "wall_time_s": round(time.time() - t0, 1),
               "samples_per_s": round(seen / max(time.time() - started, 1e-9), 2),
               "logit_offset": round(float(unwrapped.logit_offset), 4),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "memory": {**memory, "train": phase_peak(since_reset=peak_resettable)},
               "hardware": hardware(acc.device, cfg),
               # The global batch and how it was made: a resume with another process count is refused.
               "processes": world, "per_process_batch": cfg.batch_size, "grad_accum": cfg.grad_accum,
               "global_batch": cfg.batch_size * world * cfg.grad_accum}
    if acc.is_main_process:
        write_json(summary_path, summary)
        if not keep_checkpoint:
            drop_checkpoint(ckpt)
    return summary


def _grad_norm(params: list[torch.Tensor], cfg: LLMConfig, acc: Accelerator) -> float:
    """The global L2 norm of the gradient of this step (after DDP's all-reduce: the same on every
    process), clipped to ``max_grad_norm`` when set. Reading it changes no gradient."""
    if cfg.max_grad_norm is not None:
        return float(acc.clip_grad_norm_(params, cfg.max_grad_norm))
    if acc.is_fsdp2:  # each process holds a shard of each gradient
        return total_grad_norm(params)
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))


def _skipped_message(st, cfg: LLMConfig, out: Path, last_saved: dict) -> str:
    """One true line: what happened, what is on disk, what to change."""
    first = st.step - st.skipped_in_row + 2
    saved = (f"the last checkpoint ({out / layout.CHECKPOINT}, step {last_saved['step']}) is intact"
             if last_saved["step"] is not None else "no checkpoint was written yet (a new run starts over)")
    best = (f", the best weights so far ({out / layout.WEIGHTS}) are from step {st.best['step']}"
            if st.best["step"] else "")
    return (f"{st.skipped_in_row} steps in a row ({first}-{st.step + 1}) had a non-finite loss or gradient: "
            f"training stopped; {saved}{best}. Lower --lr, set --max-grad-norm (e.g. 1.0) or train in fp32, "
            "then resume or start again")


def _continue_schedule_at(lr: float, opt: torch.optim.Optimizer, sched) -> None:
    """After restoring a checkpoint: if ``lr`` differs from the one the checkpoint's schedule was
    built with, continue the same warm-up / cosine shape scaled to ``lr`` from the current step."""
    if all(base == lr for base in sched.base_lrs):
        return
    sched.base_lrs = [lr] * len(opt.param_groups)
    for group, factor in zip(opt.param_groups, sched.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(sched.last_epoch)
    sched._last_lr = [group["lr"] for group in opt.param_groups]


def _main_says(acc: Accelerator, yes: bool) -> bool:
    """The main process's ``yes`` on every process: a decision taken on one process's clock must
    not send the others down another path (one would wait for a barrier the others never reach)."""
    if acc.num_processes == 1:
        return yes
    from accelerate.utils import broadcast

    flag = torch.tensor([int(yes)], device=acc.device)
    return bool(broadcast(flag, from_process=0).item())


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
