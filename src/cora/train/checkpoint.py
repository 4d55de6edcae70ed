"""Checkpoints hold trainable tensors only (safetensors) plus the loop state needed to resume.
Nothing in them is a pickle: a run folder someone hands you runs no code on ``--resume``.

``RUN/model.safetensors``                 best trainable tensors (by the selection metric)
``RUN/checkpoint/trainable.safetensors``  last trainable tensors
``RUN/checkpoint/state.safetensors``      optimizer state tensors, RNG states (uint8)
``RUN/checkpoint/state.json``             step counters, best, scheduler state, optimizer
                                          hyper-parameters, log length (see cora.safe_state)

The folder is built in a temporary sibling and swapped in (:func:`cora.io.atomic_dir`): after a
kill at any moment one complete checkpoint exists, ``checkpoint/`` or, mid-swap,
``.checkpoint.old/``, which :func:`prepare_resume` puts back. A finished run deletes it unless
asked to keep it (``cora train --keep-checkpoint``).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from cora import layout
from cora.errors import CoraError
from cora.io import atomic_dir, atomic_path, remove_partial
from cora.safe_state import (
    has_state,
    read_state,
    refuse_pickle,
    save_tensor_file,
    write_state,
)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_tensor_file(tmp, tensors)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CoraError(f"{path}: checkpoint not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CoraError(f"{path}: not a readable safetensors file ({e})") from None


def save_checkpoint(folder: Path, trainable: dict[str, torch.Tensor], state: dict) -> None:
    with atomic_dir(folder, overwrite=True) as tmp:
        save_tensor_file(tmp / "trainable.safetensors", trainable)
        write_state(tmp, "state", state)


def prepare_resume(run: Path) -> None:
    """Before a run looks for its checkpoint (main process only): put back ``run/checkpoint``
    where a kill interrupted its swap, and remove the temporaries that killed writes of the
    files only the training process writes left in ``run``."""
    for name in (layout.CHECKPOINT, layout.WEIGHTS, layout.SUMMARY):
        remove_partial(Path(run) / name)


def has_checkpoint(folder: Path) -> bool:
    return has_state(folder, "state")


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    refuse_pickle(folder)
    return load_tensors(Path(folder) / "trainable.safetensors"), read_state(folder, "state")


def drop_checkpoint(folder: Path) -> None:
    """A finished run needs no resume state (47 MB for SmolLM2): remove it and any leftovers."""
    folder = Path(folder)
    remove_partial(folder)
    shutil.rmtree(folder, ignore_errors=True)


@dataclass
class LoopState:
    """The training loop's resumable counters, as one object: what :func:`save_loop` writes and
    :func:`load_loop` gives back, so what is saved and what is restored cannot drift apart."""

    step: int = 0  # optimizer steps taken
    micro: int = 0  # batches seen (grad_accum of them per step): the resume offset in the data order
    best: dict = field(default_factory=lambda: {"score": -math.inf, "step": 0})
    bad: int = 0  # validations since the best
    # The training losses since the last validation (a checkpoint between validations has some),
    # so the next log line's mean loss is the uninterrupted run's.
    running: list = field(default_factory=list)
    # Training time before the interruption (up to its last checkpoint), so a resumed run reports
    # the time it took in all; the log's length then, for the truncate on resume.
    elapsed_s: float = 0.0
    log_bytes: int = 0
    # Gradient norms since the last validation (one per step, logged as their max and last), steps
    # skipped for a non-finite gradient in all and in a row.
    grad_norms: list = field(default_factory=list)
    skipped: int = 0
    skipped_in_row: int = 0
    # The fp16 recipe's GradScaler (cora.train.precision), empty in other modes.
    precision: dict = field(default_factory=dict)
    # Processes that trained it: the global batch (batch_size x processes) and so the order of the
    # data depend on it, so a resume must have as many.
    world_size: int = 1


def save_loop(folder: Path, trainable: dict[str, torch.Tensor], st: LoopState, optimizer_state: dict, sched) -> None:
    """The last state of a run (main process only): whole trainable tensors, the optimizer's
    state (as ``Optimizer.state_dict``), scheduler, RNGs and the counters of ``st``, swapped in
    atomically."""
    save_checkpoint(folder, trainable, {
        "optimizer": optimizer_state, "scheduler": sched.state_dict(),
        "torch_rng": torch.get_rng_state(),
        # The generator of the GPU this process computes on, not of every visible one: a resume
        # where fewer GPUs are visible restores it too.
        "cuda_rng": [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "step": st.step, "best": st.best, "bad": st.bad, "micro": st.micro, "elapsed_s": st.elapsed_s,
        "running": st.running, "log_bytes": st.log_bytes, "grad_norms": st.grad_norms, "skipped": st.skipped,
        "skipped_in_row": st.skipped_in_row, "precision": st.precision, "world_size": st.world_size})


def load_loop(folder: Path, sched, world_size: int = 1) -> tuple[dict[str, torch.Tensor], dict, LoopState]:
    """The trainable tensors, optimizer state and counters of the checkpoint in ``folder``; the
    scheduler and RNGs are restored in place. ``world_size``: the processes resuming it."""
    trainable, state = load_checkpoint(folder)
    if (saved := state.get("world_size", 1)) != world_size:  # before anything is restored
        raise CoraError(f"{folder}: trained by {saved} process(es), resumed by {world_size}: the order of the "
                        f"training rows depends on the number of processes; resume it with {saved}")
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if torch.cuda.is_available() and state["cuda_rng"]:
        # Older checkpoints hold every visible GPU's state: take this process's GPU's when present.
        states, current = state["cuda_rng"], torch.cuda.current_device()
        torch.cuda.set_rng_state(states[current] if current < len(states) else states[0])
    st = LoopState(step=state["step"], micro=state["micro"], best=state["best"], bad=state["bad"],
                   running=list(state.get("running", [])), elapsed_s=state["elapsed_s"], log_bytes=state["log_bytes"],
                   # checkpoints written before these existed: none recorded
                   grad_norms=list(state.get("grad_norms", [])), skipped=state.get("skipped", 0),
                   skipped_in_row=state.get("skipped_in_row", 0), precision=dict(state.get("precision") or {}),
                   world_size=saved)
    return trainable, state["optimizer"], st
