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

Cost: a wrapped layer adds two operators per distinct input, whatever the number of modules
reading it: one rank-r down-projection ``dropout(x) A_b`` (a bmm, shared by q/k/v or gate/up,
which read the same tensor and, in CoRA, get the same A) and one up-projection ``h [B_q|B_k|B_v]``
for all modules of that input at once (an mm). The sum with the frozen product costs nothing
extra: each wrapped module computes ``W x`` as ``addmm(s h B, x, W^T)``, the update entering the
frozen matmul's own accumulator. So q/k/v/o add 4 operators per layer; casts happen once per
forward (below), not per module. (The eager forward of a small model is dispatch-bound: time
follows the operator count, not the rank-r arithmetic.)

Precision: A and B are trained in fp32. Once per forward pass they are cast to the frozen
model's dtype (one cast per A width, one for all B's together), so on a bf16 / fp16 model the
rank-r products run in that dtype with fp32 accumulation inside the kernels and the sum
``W x + s h B`` is accumulated with the frozen product and rounded once; the gradients of B come
back through the cast and accumulate in fp32. Under fp16 autocast (the reference's recipe) the
casts are left to autocast, as for peft's LoRA.
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


# Sibling modules that read one input tensor in HF decoder layers: they share the rank-r
# down-projection and one fused up-projection.
SHARED_INPUT: tuple[frozenset[str], ...] = (frozenset({"q_proj", "k_proj", "v_proj"}),
                                            frozenset({"gate_proj", "up_proj"}))


class _InputGroup:
    """Wrapped modules of one layer that read the same input; ``index``: its place in the adapter's
    list, and so its B's column block in the forward's concatenated B."""

    def __init__(self, members: list[CollaborativeLinear], index: int):
        self.members, self.index = members, index
        self.widths = [m.out_features for m in members]


def _scaled_concat(bs: list[torch.Tensor], scale: float, dtype: torch.dtype | None) -> torch.Tensor:
    """``s [B_1|...|B_n]``, cast to ``dtype`` when one is given."""
    b = torch.cat(bs, dim=1) * scale
    return b if dtype is None else b.to(dtype)


class _PairWeights:
    """What one forward pass gives every wrapped module: the pair's A per input width and each
    group's ``s [B_1|...|B_n]``, cast once to the compute dtype; plus the last group's update.

    A group's update ``dropout(x) A_b s [B_1|...|B_n]`` is computed by its first module and reused
    by the others while they read the *same tensor* (identity, never values). The price is one
    dropout mask per input rather than per module (peft draws one per module); in eval there is no
    dropout and the result is identical.
    """

    def __init__(self) -> None:
        self.set(None, None)

    def set(self, a_by_width: dict[int, torch.Tensor] | None, b_by_group: list[torch.Tensor] | None,
            per_group: tuple[float, torch.dtype | None] | None = None) -> None:
        """``b_by_group`` None with ``per_group`` (scale, dtype): each group concatenates its own
        B's when its first module runs (sharded parameters are whole only inside their layer)."""
        self.a_by_width, self.b_by_group, self.per_group = a_by_width, b_by_group, per_group
        self.last_x: torch.Tensor | None = None
        self.last_group: _InputGroup | None = None
        self.last_update: tuple[torch.Tensor, ...] = ()

    def update(self, group: _InputGroup, x: torch.Tensor, dropout: nn.Module) -> tuple[torch.Tensor, ...]:
        """Each member's ``s dropout(x) A_b B``, (batch * T, its width) views of one product; reused
        while ``x`` is the same tensor."""
        if self.last_x is x and self.last_group is group:
            return self.last_update
        a = self.a_by_width[x.shape[-1]]  # (batch, d_in, r)
        if x.shape[0] != a.shape[0]:
            raise CoraError(f"collaborative weights are for {a.shape[0]} samples but the batch has {x.shape[0]}")
        h = torch.bmm(dropout(x).reshape(x.shape[0], -1, x.shape[-1]), a)  # (batch, T, r)
        # One split, not a slice per member: its backward is one concatenation.
        if self.b_by_group is not None:
            b = self.b_by_group[group.index]
        else:
            b = _scaled_concat([m.lowrank_B for m in group.members], *self.per_group)
        update = torch.mm(h.reshape(-1, a.shape[-1]), b).split(group.widths, dim=1)
        self.last_x, self.last_group, self.last_update = x, group, update
        return update


class CollaborativeLinear(nn.Module):
    """``nn.Linear`` plus a per-sample low-rank path whose A comes from outside and B is trained."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float, weights: _PairWeights):
        super().__init__()
        self.base = base
        self.rank = rank
        self.scale = alpha / rank
        # Zero init: at step 0 the wrapped model is exactly the frozen LLM.
        self.lowrank_B = nn.Parameter(torch.zeros(rank, base.out_features, dtype=torch.float32))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Plain attributes, not submodules: shared by the wrappers, set by the adapter.
        self._weights = weights
        self._group: _InputGroup | None = None
        self._member = 0  # this module's place in its group

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:  # some model code reads .weight.dtype / .device
        weight = self.base.weight
        return weight() if callable(weight) else weight  # a quantised linear's weight is a method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._weights.a_by_width is None:
            return self.base(x)
        update = self._weights.update(self._group, x, self.dropout)[self._member]  # s h B, (batch * T, d_out)
        if type(self.base) is nn.Linear and self.base.bias is None:
            # W x + s h B in the frozen matmul's own pass: the update is addmm's input.
            out = torch.addmm(update, x.reshape(-1, x.shape[-1]), self.base.weight.t())
        else:  # a bias, or a replaced linear (quantised, hooked): one add after it
            out = self.base(x).reshape(-1, self.out_features) + update
        return out.reshape(*x.shape[:-1], self.out_features)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


class CollaborativeAdapter(nn.Module):
    """Wraps the selected linear modules of every decoder layer and drives them. The B matrices
    are parameters of the wrapped modules, inside the model: move or cast the model, not this.

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
        self._weights = _PairWeights()
        self.wrapped: dict[str, CollaborativeLinear] = {}
        pattern = re.compile(r"(^|\.)(" + "|".join(targets) + r")$")
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.Linear) and pattern.search(name):
                wrapper = CollaborativeLinear(module, rank, alpha, dropout, self._weights)
                model.set_submodule(name, wrapper)
                self.wrapped[name] = wrapper
        if not self.wrapped:
            linears = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
            raise CoraError(f"no linear modules named {', '.join(targets)} in this model (it has: {', '.join(linears)})")
        found = {n.rsplit(".", 1)[-1] for n in self.wrapped}
        missing = sorted(set(targets) - found)
        if missing:
            raise CoraError(f"this model has no {', '.join(missing)} modules for --modules {modules}")
        # The B's are the wrapped modules' own parameters, registered there alone (inside the
        # model's decoder layers): a second registration here would make FSDP see each B shared
        # between a layer's shard group and the root's.
        self._groups = self._group_by_input()

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """The B's this adapter drives, so ``adapter.parameters()`` and ``zero_grad()`` reach
        them; none of its own (``recurse=False``: what FSDP and the model's own listing read)."""
        if recurse:
            for name, w in self.wrapped.items():
                yield f"{prefix}{'.' if prefix else ''}{name}.lowrank_B", w.lowrank_B

    def _group_by_input(self) -> list[_InputGroup]:
        """q/k/v (and gate/up) of one layer form one group; every other module is its own. The
        groups' B's are laid side by side in that order in the forward's concatenated B."""
        keys: dict[tuple[str, int | str], list[CollaborativeLinear]] = {}
        for name, w in self.wrapped.items():
            parent, _, leaf = name.rpartition(".")
            shared = next((i for i, g in enumerate(SHARED_INPUT) if leaf in g), name)
            keys.setdefault((parent, shared), []).append(w)
        groups = [_InputGroup(members, i) for i, members in enumerate(keys.values())]
        for group in groups:
            for j, w in enumerate(group.members):
                w._group, w._member = group, j
        return groups

    def _b_by_group(self, dtype: torch.dtype | None) -> list[torch.Tensor]:
        """``s [B_1|...|B_n]`` of every group, in the compute dtype: one concatenation, one scaling
        and at most one cast per forward, whatever the number of layers."""
        b_all = _scaled_concat([w.lowrank_B for g in self._groups for w in g.members], self.alpha / self.rank, dtype)
        return list(b_all.split([sum(g.widths) for g in self._groups], dim=1))

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
        previous = self._weights.a_by_width, self._weights.b_by_group, self._weights.per_group
        if a_by_width is None:
            self._weights.set(None, None)
        else:
            dtype = self._compute_dtype()
            if dtype is not None:  # once per forward, not per module (module docstring)
                a_by_width = {w: a if a.dtype == dtype else a.to(dtype) for w, a in a_by_width.items()}
            if self._sharded():  # FSDP: a layer's B is whole only while that layer runs
                self._weights.set(a_by_width, None, per_group=(self.alpha / self.rank, dtype))
            else:
                self._weights.set(a_by_width, self._b_by_group(dtype))
        try:
            yield
        finally:
            if not hold:
                self._weights.set(*previous)

    def _sharded(self) -> bool:
        """Whether an engine holds the B's as shards now (FSDP2's DTensors between layer passes)."""
        return any(type(w.lowrank_B).__name__ == "DTensor" for w in self.wrapped.values())

    def _compute_dtype(self) -> torch.dtype | None:
        """The frozen weights' dtype when A and B must be cast to it; None under autocast (it casts)
        or when they already match (fp32)."""
        first = next(iter(self.wrapped.values()))
        if _autocast_on(first.lowrank_B.device.type):
            return None
        dtype = first.weight.dtype  # int8 when the frozen linears are quantised: activations stay fp32
        return dtype if dtype.is_floating_point and dtype != torch.float32 else None

    def b_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{n}.lowrank_B": w.lowrank_B.detach() for n, w in self.wrapped.items()}

    def load_b_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for n, w in self.wrapped.items():
            w.lowrank_B.data.copy_(state[f"{n}.lowrank_B"])
