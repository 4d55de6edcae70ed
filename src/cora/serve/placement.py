"""Where, in what precision and on how many CPU threads a trained run scores (``recommend``,
``score``, ``serve``, ``evaluate``).

By default a run scores where and as it trained. This machine may differ: a run trained on a GPU
scores on the CPU when there is no CUDA here, and bf16 / fp16 fall back to fp32 on a CPU without
the matrix units for them (AVX512-BF16 / AMX), where they would run several times slower than
fp32. Each such change is said in one line; an explicit ``--device cuda`` without CUDA is an error.
``int8`` (CPU only) loads fp32 weights and quantises the decoder's linears (:mod:`cora.llm.quantize`).
``bf16-mixed`` keeps the weights in fp32 and runs the matrix products in bf16 under autocast: the
residual stream, norms and softmax stay fp32, so it lands nearer fp32 than pure bf16 at about the
same speed (benchmarks/recommend_latency.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cora.errors import CoraError
from cora.llm.backbone import cpu_has_fast, resolve_device, resolve_dtype


@dataclass(frozen=True)
class Placement:
    """What a user asked for (None: the run's own / the machine's)."""

    device: str | None = None
    dtype: str | None = None
    threads: int | None = None


@dataclass(frozen=True)
class Resolved:
    device: str
    dtype: str  # what the backbone loads in
    threads: int
    int8: bool = False  # quantise its decoder linears after loading
    bf16_mixed: bool = False  # fp32 weights, bf16 autocast while scoring

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "bf16-mixed" if self.bf16_mixed else self.dtype


def machine_threads() -> int:
    """CPUs this process may run on (its affinity: a container's or taskset's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve(asked: Placement, trained_device: str, trained_dtype: str,
            say: Callable[[str], None] = lambda line: None) -> Resolved:
    """The device, dtype and thread count to score with; sets torch's thread count."""
    device = asked.device
    if device is None:
        device = trained_device
        if device != "cpu" and not torch.cuda.is_available():
            if device != "auto":
                say(f"the run trained on {trained_device}; this machine has no CUDA: scoring on the CPU")
            device = "cpu"
    kind = resolve_device(device).type  # an explicit cuda without CUDA: one line, here
    if asked.dtype == "int8":
        if kind != "cpu":
            raise CoraError("--dtype int8 (dynamic quantisation) runs on a CPU; on a GPU use bf16 or fp16")
        return Resolved(device=device, dtype="fp32", threads=set_threads(asked.threads), int8=True)
    mixed = asked.dtype == "bf16-mixed"  # its matrix products are bf16's: the same units decide
    dtype = "bf16" if mixed else asked.dtype or trained_dtype
    if kind == "cpu" and not cpu_has_fast(resolve_dtype(dtype)):
        say(f"this CPU has no native {dtype} matrix units (AVX512-BF16 / AMX): scoring in fp32")
        dtype, mixed = "fp32", False
    return Resolved(device=device, dtype="fp32" if mixed else dtype, threads=set_threads(asked.threads),
                    bf16_mixed=mixed)


def set_threads(threads: int | None) -> int:
    """torch's intra-op threads: ``threads``, else every CPU this process may use."""
    if threads is not None and threads < 1:
        raise CoraError(f"--threads {threads}: must be at least 1")
    n = threads or machine_threads()
    torch.set_num_threads(n)
    return n
