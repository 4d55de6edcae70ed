"""Per-sample low-rank injection: CoRA's collaborative weights inside a frozen LLM.

Like ``peft``, this file keeps the tuner apart from the model: :class:`CollaborativeAdapter`
wraps chosen ``nn.Linear`` modules of any Llama / Qwen2 / Mistral / Gemma-style model (found by
module name; no forked modeling file, no patching of transformers internals) and owns their
trainable ``B`` matrices. The per-pair ``A`` matrices are *not* parameters: a generator computes
one ``A`` per (user, item) pair and hands them to :meth:`CollaborativeAdapter.weights` for the
duration of a forward pass.

For sample ``b`` a wrapped module computes::

    y_b = W x_b + s * B^T (A_b^T dropout(x_b))          (s = alpha / r)

i.e. the per-pair weight ``W + s (A_b B)^T`` without materialising it: two batched matmuls of
rank r, no per-sample Python loop. With no weights set, the module is exactly ``W x``.

Precision: A and B are fp32. On an fp32 model the path casts nothing. On a bf16 / fp16 model
(outside autocast) the rank-r product and the sum ``W x + s B^T h`` are taken in fp32 and rounded
once to the model's dtype: ``W x`` already carries the model's rounding, the update adds none of
its own. Under fp16 autocast (the reference's recipe) autocast decides, as it does for peft's LoRA.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch
from torch import nn

from cora.errors import CoraError

# The paper's letters -> projection names in HF decoder layers ("f" = the MLP's projections).
MODULE_LETTERS: dict[str, tuple[str, ...]] = {
    "q": ("q_proj",),
    "k": ("k_proj",),
    "v": ("v_proj",),
    "o": ("o_proj",),
    "f": ("gate_proj", "up_proj", "down_proj"),
}
PRESETS = ("qkvof", "qkvo", "qkv", "qko", "qk")


def parse_modules(spec: str) -> tuple[str, ...]:
    """``"qkvo"`` -> ``("q_proj", "k_proj", "v_proj", "o_proj")``; unknown letters are an error."""
    spec = spec.strip().lower()
    bad = sorted(set(spec) - set(MODULE_LETTERS))
    if not spec or bad:
        raise CoraError(f"--modules '{spec}': use letters from q, k, v, o, f (presets: {', '.join(PRESETS)})")
    return tuple(name for letter in dict.fromkeys(spec) for name in MODULE_LETTERS[letter])


class _WeightsSlot:
    """Shared by every wrapped module: the current per-pair A matrices, keyed by input width.

    It also remembers the last ``dropout(x) A`` it computed. q/k/v (and gate/up) of one layer
    receive the *same* input tensor and, in CoRA, the same A, so their rank-r projection is one
    product, not three: the cache hits on tensor identity, never on values. The price is one
    dropout mask shared by modules that read the same input (peft draws one per module); in eval
    there is no dropout and the result is identical.
    """

    def __init__(self) -> None:
        self.a_by_width: dict[int, torch.Tensor] | None = None
        self.last_x: torch.Tensor | None = None
        self.last_h: torch.Tensor | None = None

    def projected(self, x: torch.Tensor, dropout: nn.Module) -> torch.Tensor:
        """``dropout(x) @ A_b`` per sample, shape (batch, T, r); reused while ``x`` is the same tensor."""
        if self.last_x is x and self.last_h is not None:
            return self.last_h
        a = self.a_by_width[x.shape[-1]]  # (batch, d_in, r)
        if x.shape[0] != a.shape[0]:
            raise CoraError(f"collaborative weights are for {a.shape[0]} samples but the batch has {x.shape[0]}")
        # (batch, T, d_in) @ (batch, d_in, r) -> (batch, T, r): rank-r work only, in A's fp32.
        xd = dropout(x).reshape(x.shape[0], -1, x.shape[-1])
        h = torch.bmm(xd if xd.dtype == a.dtype else xd.to(a.dtype), a)
        self.last_x, self.last_h = x, h
        return h

    def set(self, a_by_width: dict[int, torch.Tensor] | None) -> None:
        self.a_by_width, self.last_x, self.last_h = a_by_width, None, None


class CollaborativeLinear(nn.Module):
    """``nn.Linear`` plus a per-sample low-rank path whose A comes from outside and B is trained."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float, slot: _WeightsSlot):
        super().__init__()
        self.base = base
        self.rank = rank
        self.scale = alpha / rank
        # Zero init: at step 0 the wrapped model is exactly the frozen LLM.
        self.lowrank_B = nn.Parameter(torch.zeros(rank, base.out_features, dtype=torch.float32))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._slot = slot  # plain attribute, not a submodule: one slot shared by all wrappers

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:  # some model code reads .weight.dtype / .device
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self._slot.a_by_width is None:
            return out
        h = self._slot.projected(x, self.dropout)  # (batch, T, r), shared by modules reading x
        # out + s * h B in one fused pass over the output (addmm), not three (matmul, scale, add);
        # on a bf16 / fp16 model the sum is taken in fp32 and rounded once.
        flat = out.reshape(-1, out.shape[-1])
        if flat.dtype != h.dtype:
            flat = flat.to(h.dtype)
        flat = torch.addmm(flat, h.reshape(-1, self.rank), self.lowrank_B, alpha=self.scale).reshape(out.shape)
        return flat if flat.dtype == out.dtype else flat.to(out.dtype)


class CollaborativeAdapter(nn.Module):
    """Wraps the selected linear modules of every decoder layer; owns the B matrices.

    Use::

        adapter = CollaborativeAdapter(model, modules="qkvo", rank=16, alpha=32, dropout=0.05)
        with adapter.weights({d_model: A_dm, d_ffn: A_ffn}):   # each (batch, d_in, r)
            logits = model(...).logits
    """

    def __init__(self, model: nn.Module, modules: str = "qkvo", rank: int = 16, alpha: float = 32.0,
                 dropout: float = 0.05):
        super().__init__()
        self.spec, self.rank, self.alpha = modules, rank, alpha
        targets = parse_modules(modules)
        self._slot = _WeightsSlot()
        self.wrapped: dict[str, CollaborativeLinear] = {}
        pattern = re.compile(r"(^|\.)(" + "|".join(targets) + r")$")
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.Linear) and pattern.search(name):
                wrapper = CollaborativeLinear(module, rank, alpha, dropout, self._slot)
                model.set_submodule(name, wrapper)
                self.wrapped[name] = wrapper
        if not self.wrapped:
            linears = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
            raise CoraError(f"no linear modules named {', '.join(targets)} in this model (it has: {', '.join(linears)})")
        found = {n.rsplit(".", 1)[-1] for n in self.wrapped}
        missing = sorted(set(targets) - found)
        if missing:
            raise CoraError(f"this model has no {', '.join(missing)} modules for --modules {modules}")
        # Registered here only for parameter bookkeeping; the modules live inside the model.
        self._b = nn.ParameterDict({n.replace(".", "__"): w.lowrank_B for n, w in self.wrapped.items()})

    def train(self, mode: bool = True):
        """The wrapped modules live inside the frozen LLM, which methods keep in eval mode; their
        dropout follows the adapter's mode instead."""
        super().train(mode)
        for w in self.wrapped.values():
            w.dropout.train(mode)
        return self

    @property
    def input_widths(self) -> list[int]:
        """Distinct input widths of wrapped modules: one A per pair is needed for each."""
        return sorted({w.in_features for w in self.wrapped.values()})

    @contextlib.contextmanager
    def weights(self, a_by_width: dict[int, torch.Tensor] | None, hold: bool = False) -> Iterator[None]:
        """The per-pair A matrices for the forward passes inside the block. ``hold``: leave them
        set after the block (until the next call), for a backward pass that recomputes layers
        (gradient checkpointing) and so runs the wrapped modules again."""
        if a_by_width is not None:
            need = set(self.input_widths) - set(a_by_width)
            if need:
                raise CoraError(f"collaborative weights missing for input width(s) {sorted(need)}")
        previous = self._slot.a_by_width
        self._slot.set(a_by_width)
        try:
            yield
        finally:
            if not hold:
                self._slot.set(previous)

    def b_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{n}.lowrank_B": w.lowrank_B.detach() for n, w in self.wrapped.items()}

    def load_b_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for n, w in self.wrapped.items():
            w.lowrank_B.data.copy_(state[f"{n}.lowrank_B"])
