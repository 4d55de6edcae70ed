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

import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from cora.errors import CoraError
from cora.io import atomic_dir, atomic_path, remove_partial
from cora.safe_state import has_state, read_state, refuse_pickle, save_tensor_file, write_state


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
    for name in ("checkpoint", "model.safetensors", "train_summary.json"):
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
