"""The reference learning-rate schedule: linear warm-up from ``warmup_start_lr`` to ``lr``, then
cosine decay to ``min_lr`` at ``max_steps`` (a LambdaLR, so its state checkpoints with the rest).
The loop passes the config's ``lr_horizon`` as ``max_steps``: the reference's cosine spans
max_epoch x iters_per_epoch, far beyond the step where validation stops a run."""

from __future__ import annotations

import math

from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer, lr: float, warmup_start_lr: float, warmup_steps: int, min_lr: float,
                  max_steps: int) -> LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (warmup_start_lr + (lr - warmup_start_lr) * step / warmup_steps) / lr
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return (min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))) / lr

    return LambdaLR(optimizer, factor)
