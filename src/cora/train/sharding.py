"""Whole tensors in and out of a sharded model (FSDP2), so a run's files do not depend on how it
was trained: its checkpoints hold whole trainable tensors and an optimizer state in the layout of
``torch.optim.Optimizer.state_dict`` (integer ids), whether one process, DDP or FSDP wrote them,
and any of them resumes from it.

Under FSDP2 every parameter is a DTensor holding one process's shard. Gathering the whole tensors
is a collective: every process calls these functions at the same point, and only the main process
(rank 0) gets the tensors (torch's ``cpu_offload`` keeps the others from holding a full copy).
Loading is the reverse: every process reads the same files and keeps its own shard. The work is
torch's (``torch.distributed.checkpoint.state_dict``); what is here maps its names onto the
checkpoint's layout."""

from __future__ import annotations

import torch
from torch import nn

try:  # torch >= 2.5: DTensor is public
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - older torch has no FSDP2 either
    DTensor = ()


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module`` holds FSDP2 shards (DTensor parameters) rather than whole tensors."""
    return bool(DTensor) and any(isinstance(p, DTensor) for p in module.parameters())


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def whole_trainable_state(method, main: bool) -> dict[str, torch.Tensor] | None:
    """The method's :meth:`trainable_state_dict` as whole tensors on the main process (None on
    the others). Sharded: a collective every process must call; otherwise only ``main`` works."""
    if not is_sharded(method):
        return method.trainable_state_dict() if main else None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    # ignore_frozen_params: the frozen backbone is never gathered (a 7B's 14 GB at each checkpoint)
    whole = get_model_state_dict(method, options=_options(cpu_offload=True, ignore_frozen_params=True))
    if not main:
        return None
    # The method's own list (its names, logit_offset, any extra tensors), each shard made whole.
    return {n: whole.get(n, t) for n, t in method.trainable_state_dict().items()}


def load_whole_trainable_state(method, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load whole tensors (every process holds the same ``state``) into the method, each process
    keeping its shard when sharded. Names and shapes are checked as the method checks them."""
    if not is_sharded(method):
        method.load_trainable_state_dict(state, source)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    from cora.io import check_tensors

    state = dict(state)
    offset = state.pop("logit_offset", None)
    expected = {n: tuple(p.shape) for n, p in method.named_parameters() if p.requires_grad}  # DTensor: global shape
    check_tensors(source, state, expected, f"method '{method.name}' with these settings")
    set_model_state_dict(method, state, options=_options(strict=False))  # strict: the frozen weights are absent
    if offset is not None:
        method.logit_offset.copy_(offset)


def whole_optimizer_state(method, opt: torch.optim.Optimizer, main: bool) -> dict | None:
    """``opt.state_dict()`` with whole tensors, on the main process (None on the others)."""
    opt = getattr(opt, "optimizer", opt)  # accelerate's wrapper
    if not is_sharded(method):
        return opt.state_dict() if main else None
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    whole = get_optimizer_state_dict(method, opt, options=_options(cpu_offload=True))
    if not main:
        return None
    # torch names each parameter by its place in the model; the checkpoint's layout numbers them
    # in the order of the optimizer's groups, as Optimizer.state_dict does.
    ids, groups, n = {}, [], 0
    for group in whole["param_groups"]:
        names = group["params"]
        ids.update({name: n + i for i, name in enumerate(names)})
        groups.append({**group, "params": list(range(n, n + len(names)))})
        n += len(names)
    return {"state": {ids[name]: value for name, value in whole["state"].items()}, "param_groups": groups}


def load_whole_optimizer_state(method, opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a state written by :func:`whole_optimizer_state` (or ``opt.state_dict()``)."""
    opt = getattr(opt, "optimizer", opt)
    if not is_sharded(method):
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = {id(p): n for n, p in method.named_parameters()}
    ordered = [names[id(p)] for group in opt.param_groups for p in group["params"]]
    if len(ordered) != sum(len(g["params"]) for g in state["param_groups"]):
        from cora.errors import CoraError

        raise CoraError("checkpoint: its optimizer state has another number of tensors than this method trains")
    named = {"state": {ordered[int(i)]: value for i, value in state["state"].items()},
             "param_groups": [{**g, "params": [ordered[int(i)] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(method, opt, named, options=_options())


def total_grad_norm(params: list[torch.Tensor]) -> float:
    """The L2 norm of all gradients of ``params`` as one vector, sharded or not (a collective
    when sharded: the shards' squares are summed across processes)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.nn.utils.get_total_norm(grads)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
