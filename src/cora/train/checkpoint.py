"""Checkpoints hold trainable tensors only (safetensors) plus the loop state needed to resume.

``RUN/model.safetensors``         best trainable tensors (by the selection metric)
``RUN/checkpoint/trainable.safetensors`` + ``state.pt``   last state: optimizer, scheduler, RNG,
                                  counters; written as one folder, atomically
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cora.errors import CoraError
from cora.io import atomic_dir, atomic_path


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CoraError(f"{path}: checkpoint not found")
    return load_file(str(path))


def save_checkpoint(folder: Path, trainable: dict[str, torch.Tensor], state: dict) -> None:
    with atomic_dir(folder, overwrite=True) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        torch.save(state, tmp / "state.pt")


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    return load_file(str(folder / "trainable.safetensors")), torch.load(folder / "state.pt", weights_only=False)
