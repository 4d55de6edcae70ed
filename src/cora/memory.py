"""Peak memory of one phase of work (loading, training, scoring), not of the whole process.

``ru_maxrss`` only grows, so a process that loads, trains and then scores would report the
loading's peak for every phase. On Linux writing 5 to ``/proc/self/clear_refs`` resets the
process's high-water mark (VmHWM), which is then read back per phase; on CUDA the allocator's
peak is reset the same way. Elsewhere the process-wide peak is reported, and said so.
"""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak() -> bool:
    """Start a phase: forget the peaks so far. False where the CPU peak cannot be reset."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def phase_peak(since_reset: bool = True) -> dict:
    """Peak resident memory (MB) since :func:`reset_peak`, and the GPU allocator's peak when CUDA
    is in use; ``process_wide`` marks a CPU figure that is the whole process's."""
    out: dict = {}
    hwm = _vm_hwm_mb() if since_reset else None
    if hwm is not None:
        out["peak_rss_mb"] = hwm
    else:
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        out["process_wide"] = True
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


@contextlib.contextmanager
def measured(into: dict, phase: str):
    """``with measured(summary_memory, "train"): ...`` records that phase's peaks under ``phase``."""
    ok = reset_peak()
    yield
    into[phase] = phase_peak(since_reset=ok)


def _vm_hwm_mb() -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    return None
