"""LLM methods: what is trainable and how a batch becomes Yes logits. One registry, one loop."""

from __future__ import annotations

from cora.errors import CoraError
from cora.methods.base import EncodedSplit, LLMMethod
from cora.methods.cora import CoRA
from cora.methods.icl import ICL

METHODS: dict[str, type[LLMMethod]] = {m.name: m for m in (CoRA, ICL)}


def method_class(name: str) -> type[LLMMethod]:
    if name not in METHODS:
        raise CoraError(f"unknown method '{name}' (choose from {', '.join(sorted(METHODS))})")
    return METHODS[name]


__all__ = ["EncodedSplit", "LLMMethod", "CoRA", "ICL", "METHODS", "method_class"]
