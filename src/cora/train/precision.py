"""Named precision modes of a run (``--dtype``), as one object the loop asks what to do.

``fp32``  fp32 weights and matmuls (on CUDA, ``--tf32`` lets them run on TF32 tensor cores).
``bf16``  frozen weights in bf16; trainable tensors and the loss in fp32; the low-rank update's
          A and B cast to bf16 once per forward, its sum accumulated with the frozen product
          (``cora.llm.lowrank``). bf16 has fp32's exponent range: no scaler.
``fp16``  the reference code's recipe (VanillaCreamer/CoRA, zyang1580/CoLLM: ``amp: True``):
          frozen weights in fp16, forward under ``torch.autocast(float16)``, fp32 trainables and a
          ``GradScaler``, whose state is part of the checkpoint so a resume is exact.

A step whose gradient is not finite after unscaling is skipped and counted by the loop in every
mode; under fp16 the scaler also halves its scale then, as it does in the reference.
"""

from __future__ import annotations

import contextlib

import torch

from cora.llm.backbone import resolve_dtype


class Precision:
    def __init__(self, dtype: str, device: torch.device):
        self.dtype = resolve_dtype(dtype)
        self.device_type = torch.device(device).type
        self.amp = self.dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device_type) if self.amp else None

    def autocast(self):
        """The forward's context: fp16 autocast for the reference recipe, nothing otherwise."""
        return autocast_for(self.dtype, self.device_type)

    def backward(self, acc, loss: torch.Tensor) -> None:
        acc.backward(self.scaler.scale(loss) if self.scaler else loss)

    def unscale(self, opt: torch.optim.Optimizer) -> None:
        """Gradients back to their true size before their norm is read (and clipped)."""
        if self.scaler:
            self.scaler.unscale_(opt)

    def step(self, opt: torch.optim.Optimizer, finite: bool) -> None:
        """The optimizer step of a finite gradient; under fp16 the scaler's update in either case."""
        if self.scaler:
            if finite:
                self.scaler.step(opt)  # unscale_ found no inf: it steps
            self.scaler.update()  # grows after a run of finite steps, halves after a skipped one
        elif finite:
            opt.step()

    @property
    def loss_scale(self) -> float | None:
        return float(self.scaler.get_scale()) if self.scaler else None

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict()} if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def autocast_for(dtype: str | torch.dtype, device_type: str):
    if resolve_dtype(dtype) == torch.float16:
        return torch.autocast(device_type, dtype=torch.float16)
    return contextlib.nullcontext()
